"""llmkit: thin helpers for the LLM course (environment checks, stand-in models, chat).

>>> import llmkit
>>> callable(llmkit.pick_model)
True
"""

from llmkit.doctor import doctor
from llmkit.pick import pick_model, standin_mode
from llmkit.standins import list_standins, standin_path

__all__ = ["doctor", "list_standins", "pick_model", "standin_mode", "standin_path"]
__version__ = "0.1.0"
