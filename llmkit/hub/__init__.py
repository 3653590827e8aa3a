"""Models on disk and from the hubs, in three steps with one module each:

- ``locating``: ``locate`` finds a model already on disk (explicit path, ``$LLMKIT_MODEL_DIR``, ``./models``, the
  Hugging Face and ModelScope caches, ``$SCOW_AI_MODEL_PATH``), or raises ``ModelNotFound`` with close names and
  the download commands;
- ``verifying``: ``verify_model_dir`` checks a folder is complete and undamaged without loading it;
- ``downloading``: ``download`` fetches with ``huggingface_hub`` / ``modelscope`` (mirrors, resumes, pickle files
  skipped, unsafe names refused) and verifies the result.

``fake`` is a tiny Hugging Face Hub on 127.0.0.1 for tests and notebook 01's offline demo of ``HF_ENDPOINT``.

>>> from llmkit import hub
>>> hub.verify_model_dir("/no/such/folder")["ok"]
False
"""

from llmkit.hub.downloading import (ANSWER_TIMEOUT_S, SOURCE_ORDER, STALE_PARTIAL_S, DownloadFailed, OfflineMode,
                                    download, download_report)
from llmkit.hub.locating import Located, ModelNotFound, hf_cache_dir, locate, pin_hf_home
from llmkit.hub.verifying import PICKLE_PATTERNS, SKIPPED_WITHOUT_PICKLE, safetensors_problem, unsafe_file_names, verify_model_dir

__all__ = ["ANSWER_TIMEOUT_S", "PICKLE_PATTERNS", "SKIPPED_WITHOUT_PICKLE", "SOURCE_ORDER", "STALE_PARTIAL_S",
           "DownloadFailed", "Located", "ModelNotFound", "OfflineMode", "download", "download_report", "hf_cache_dir",
           "locate", "pin_hf_home", "safetensors_problem", "unsafe_file_names", "verify_model_dir"]
