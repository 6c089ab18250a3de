"""Running a service on a fleet of hosts: inventory, placement, batches, image shipping, the remote helper."""
