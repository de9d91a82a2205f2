"""What every stage uses: errors, atomic I/O, run folders and manifests, devices."""
