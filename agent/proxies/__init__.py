"""The agent's supervisor of its sidecar proxy processes (`mesh connect proxy`).

plan.py decides (pure); procfs.py and files.py tell processes and files apart;
process.py holds one process; supervisor.py runs the loop; view.py renders one proxy
for the API; readiness.py parses a proxy's ready report. The agent knows nothing of a
proxy's insides: it starts and stops processes and shows what the proxies report.
"""
