import socket
import time

import pytest
import torch

import editnb
from editnb import models, runtime


def test_setup_chooses_toy_on_cpu_and_prints_why(capsys, monkeypatch):
    monkeypatch.delenv("EDITNB_PROFILE", raising=False)
    rt = editnb.setup(seed=3)
    line, versions = capsys.readouterr().out.strip().splitlines()
    assert rt.profile == "toy" and rt.device.type == "cpu" and rt.dtype == torch.float32
    assert "profile=toy" in line and "no CUDA GPU" in line
    # the second line is what a bug report needs: the three libraries' versions and the GPU
    from importlib.metadata import version
    assert versions == (f"versions: torch {torch.__version__}, diffusers {version('diffusers')}, "
                        f"transformers {version('transformers')}; GPU: none")
    # seeding: same seed, same numbers
    a = torch.rand(3)
    editnb.setup(seed=3, verbose=False)
    assert torch.equal(a, torch.rand(3))
    assert torch.equal(torch.rand(2, generator=rt.generator(5)), torch.rand(2, generator=rt.generator(5)))


def test_environment_sets_auto_profile_and_explicit_profile_wins(monkeypatch):
    monkeypatch.setenv("EDITNB_PROFILE", "toy")
    assert editnb.setup(verbose=False).profile == "toy"
    with pytest.warns(UserWarning, match="EDITNB_PROFILE='toy' is ignored"):
        assert editnb.setup(profile="sd15", verbose=False).profile == "sd15"
    monkeypatch.setenv("EDITNB_PROFILE", "bogus")
    with pytest.raises(ValueError, match="EDITNB_PROFILE"):
        editnb.setup(verbose=False)


def test_bad_arguments(monkeypatch):
    monkeypatch.delenv("EDITNB_PROFILE", raising=False)
    with pytest.raises(ValueError, match="unknown profile"):
        editnb.setup(profile="sdxl", verbose=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            editnb.setup(device="cuda", verbose=False)


def test_offline_detection_is_quick(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.time()
    assert runtime.hub_reachable() is False
    assert time.time() - t < 0.1
    # without the variable a single short connect is tried (this machine has no Hub) and cached
    monkeypatch.delenv("HF_HUB_OFFLINE")
    runtime._OFFLINE_CACHE.clear()
    monkeypatch.setattr(runtime, "HUB_HOST", "hub.invalid")
    t = time.time()
    assert runtime.hub_reachable(timeout=1.0) is False
    assert time.time() - t < 5
    runtime._OFFLINE_CACHE.clear()


def test_sd15_offline_fails_fast_naming_model_and_toy_profile(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    monkeypatch.setattr(models, "hub_file_cached", lambda repo, f: False)
    models.clear_cache()

    def no_network(*args, **kwargs):  # "fast" means: it never waits on a connection
        raise AssertionError("the loader tried the network although the Hub is offline")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(RuntimeError) as err:
        models.load("sd", profile="sd15", device="cpu")
    msg = str(err.value)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in msg and "toy" in msg and "unreachable" in msg
    missing = models.missing_offline("sd15")
    assert "timbrooks/instruct-pix2pix" in missing and "openai/clip-vit-large-patch14" in missing


def test_setup_sd15_offline_warns_at_once(monkeypatch):
    monkeypatch.delenv("EDITNB_PROFILE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "hub_file_cached", lambda repo, f: False)
    with pytest.warns(UserWarning, match="toy profile") as rec:
        rt = editnb.setup(profile="sd15", verbose=False)
    assert rt.profile == "sd15" and "CIDAS/clipseg-rd64-refined" in str(rec[0].message)


def test_registry_names_every_model():
    ids = {s.sd15 for s in models.REGISTRY.values()}
    for repo in ["stable-diffusion-v1-5/stable-diffusion-v1-5", "timbrooks/instruct-pix2pix",
                 "openai/clip-vit-large-patch14", "openai/clip-vit-base-patch32", "CIDAS/clipseg-rd64-refined",
                 "h94/IP-Adapter", "Salesforce/blip-image-captioning-base", "facebook/dino-vitb8",
                 "facebook/dino-vits16", "QWW/EditCLIP"]:
        assert repo in ids
    assert models.REGISTRY["ip-adapter"].sd15_file == "models/ip-adapter_sd15.bin"
    with pytest.raises(ValueError, match="unknown model"):
        models.load("sdxl", profile="toy")
    with pytest.raises(RuntimeError, match="no toy version"):
        models.load("blip", profile="toy")
