"""The consuming processes: the projection workers and the case opener."""
