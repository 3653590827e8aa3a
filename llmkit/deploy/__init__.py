"""Serving a model: OpenAI-compatible servers, GGUF for llama.cpp, the streamlit chatbot."""
