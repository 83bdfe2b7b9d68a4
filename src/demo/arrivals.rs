//! Load generator arrivals.
