"""What runs on the served side for a notebook: the cell interpreter (streams, display capture)
and widget comms. Imports only the protocol layer, so a bare server needs nothing else."""
