"""SimDINOv2 package and home of the code shared with the v1 tree.

See docs/DESIGN.md for the map of which module owns which concept.
"""

__version__ = "0.1.0"
