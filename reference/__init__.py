"""Reference implementations used to check and time the port (not part of the installed package).

``torch_videofusion``: the official network and released loss in PyTorch (needs torch: ``pip install .[torch]``).
"""
