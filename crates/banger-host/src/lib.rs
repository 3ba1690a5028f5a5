//! Host capability detection (filled in by the doctor work).
