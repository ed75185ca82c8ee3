"""Analysis of trained adapters: ΔW spectra and the plots the parent run shows."""
