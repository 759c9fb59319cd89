import os

# Tests run offline on the toy profile with progress bars off; notebooks run by nbval inherit this.
os.environ.setdefault("EDITNB_PROFILE", "toy")
os.environ.setdefault("EDITNB_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
