"""The scheduler: per blob (task), which agents hold which pieces; parents for joiners; the origin lease."""
