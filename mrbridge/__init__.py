"""mrbridge: a differentiable MRI simulation bridged to a real 3T scanner."""

__version__ = "0.1.0"
