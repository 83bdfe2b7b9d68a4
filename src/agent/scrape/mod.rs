//! Model-server metrics scraping: not written yet.
