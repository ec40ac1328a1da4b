"""Training: exact templates and loss masks, packing without cross-sample attention, TRL underneath."""
