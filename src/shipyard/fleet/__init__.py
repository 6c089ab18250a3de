"""Running a service on a fleet of hosts: inventory, placement, batches, image shipping and the
remote helper shipyard installs on each host."""
