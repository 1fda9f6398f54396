# The doctest collector imports every module; lmms.py needs lmms-eval (requirements-eval.txt). Without it, the
# bridge's tests in tests/test_eval.py say why they skip (and fail under CI, which installs it).
import importlib.util

collect_ignore = [] if importlib.util.find_spec("lmms_eval") else ["lmms.py"]
