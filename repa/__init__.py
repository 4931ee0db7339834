"""repa: a plugin-based research framework for REPA (Yu et al., arXiv 2410.06940).

Importing this package is cheap: torch and the other heavy libraries are imported only
by the modules that compute with them.
"""

__version__ = "0.1.0"
