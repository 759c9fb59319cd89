"""The LIME supplement's tables as typed in editnb.methods.lime_paper agree with each other."""
from editnb.methods import lime_paper


def test_tables_share_their_common_rows():
    # Table 7's Eq. 3 row and Table 8's KMeans-8 row are both LIME's defaults; both tables start from plain IP2P
    assert lime_paper.TABLE_7["IP2P + LIME, unrelated suppressed (Eq. 3)"] == lime_paper.TABLE_8["KMeans 8"]
    assert lime_paper.TABLE_7["IP2P"] == lime_paper.TABLE_8["IP2P"]


def test_table_has_magicbrush_columns_and_every_row():
    t = lime_paper.table(lime_paper.TABLE_8)
    assert list(t.columns) == ["L1", "L2", "CLIP-I", "DINO", "CLIP-T"]
    assert list(t.index) == list(lime_paper.TABLE_8)
    assert t.loc["KMeans 4", "L1"] == 0.080 and t.loc["agglomerative 0.4", "DINO"] == 0.896


def test_pie_bench_table_uses_the_benchmark_runners_columns():
    from editnb.bench import runner

    t = lime_paper.pie_table()
    assert list(t.columns) == [label for _, label in runner.COLUMNS]  # so the toy's runs sit beside it as they are
    assert t.loc["IP2P + LIME", "BG PSNR ↑"] == 21.36 and t.loc["HIVE w/MB", "CLIP edited ↑"] == 21.75
    # the supplement's reading of its own table: LIME improves structure and background over IP2P, not "CLIP edited"
    from editnb.methods import tables

    ip2p, lime = t.loc["IP2P"], t.loc["IP2P + LIME"]
    assert all(tables.better(c, lime[c], ip2p[c]) for c in list(t.columns)[:5])
    assert not tables.better("CLIP edited ↑", lime["CLIP edited ↑"], ip2p["CLIP edited ↑"])


def test_table_3_shares_plain_ip2p_with_table_7_and_lime_improves_hive_on_every_metric():
    """Table 3's IP2P row is Table 7's; the supplement's reading: LIME inside HIVE is better than HIVE on
    all five MagicBrush metrics, without MagicBrush fine-tuning and with it (lower L1/L2, higher rest)."""
    assert lime_paper.TABLE_3["IP2P"] == lime_paper.TABLE_7["IP2P"]
    t = lime_paper.table(lime_paper.TABLE_3)
    for base in ("HIVE", "HIVE w/MB"):
        plain, limed = t.loc[base], t.loc[base + " + LIME"]
        assert (limed[["L1", "L2"]] <= plain[["L1", "L2"]]).all() and (limed[["CLIP-I", "DINO", "CLIP-T"]] > plain[["CLIP-I", "DINO", "CLIP-T"]]).all()


def test_instructdiffusion_with_lime_is_no_worse_on_any_metric_and_ties_clip_t():
    """Sec. A.1's text: LIME inside InstructDiffusion improves L1, L2, CLIP-I and DINO on MagicBrush and
    leaves CLIP-T at 0.30."""
    t = lime_paper.table(lime_paper.INSTRUCTDIFFUSION_MAGICBRUSH)
    plain, limed = t.loc["InstructDiffusion"], t.loc["InstructDiffusion + LIME"]
    assert (limed[["L1", "L2"]] < plain[["L1", "L2"]]).all() and (limed[["CLIP-I", "DINO"]] > plain[["CLIP-I", "DINO"]]).all()
    assert limed["CLIP-T"] == plain["CLIP-T"] == 0.30
