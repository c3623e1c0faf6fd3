"""Refine a twin from measured raw data through the differentiable simulation (``mrbridge refine``).

``scans`` windows each measurement to what the twin grid holds, ``identifiable`` refuses maps the scans cannot
determine, ``start`` builds the starting twin from the data, ``maps`` parametrises the fitted maps, ``fit`` runs
the fit, ``report`` draws it, and ``run`` ties them together.
"""
