"""Web apps for the course, each a streamlit script that is also its own launcher.

``llmkit.deploy.apps.chatbot``: ``python -m llmkit.deploy.apps.chatbot [--model M] [--host H] [--port P]`` (notebook 11).
"""
