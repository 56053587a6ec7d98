//! llm-sim: placeholder, being written.
