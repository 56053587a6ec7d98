//! gpu-exporter: placeholder, being written.
