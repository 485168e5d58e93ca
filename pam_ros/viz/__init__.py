"""Pictures of results: the overlay drawing and the one colour per object that overlay and RViz markers share."""
