"""Built-in components, registered through entry points exactly like a third-party plugin.

Each `<kind>/__init__.py` is the light plugin module (params models + registration hook);
the implementations live beside it and import torch.
"""
