"""models/cardio: the cardiovascular model library (Smith 2004 circulation, Ursino 1998 reflex)."""
