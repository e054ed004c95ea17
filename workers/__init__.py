"""The worker runtime: claims jobs from the store and runs the science on a device."""
