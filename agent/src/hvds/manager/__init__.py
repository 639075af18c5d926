"""hvds-manager: the site manager, one per site. It keeps the site's state (hosts, protection
groups, commands) in a database, serves the web API the Ansible modules and the `hvds` CLI use,
pushes each host's VPGs to its VDSA, and talks to the peer sites' managers."""
