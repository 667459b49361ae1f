"""The web interface: what the Gradio app (`app.py`) and its Hugging Face Space need, apart from the library.

- handlers.py: what each tab computes, free of UI code
- model_cache.py: models loaded once per process; the Hub models offered when online; the tabs' default models
- examples.py: the example photos' natural and adversarial versions, made by (and kept per) shipped model
- space.py: the Space's settings, README front matter and deploy command
"""
