"""DuckDB peer for `sori-bench audience`: loads the generated users and events with typed
columns and times the given count queries. Prints [[p50_ms, count], ...] as JSON.

Usage: duckdb_audience.py USERS_CSV EVENTS_CSV RUNS QUERIES_JSON
"""
import json
import sys
import time

import duckdb

users, events, runs, queries = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
con = duckdb.connect()
con.execute(f"""
CREATE TABLE users AS SELECT id, member, last_seen_at, created_at,
  CASE WHEN tags IS NULL OR tags = '' THEN []::VARCHAR[] ELSE string_split(tags, '|') END AS tags,
  email, cart_count, plan, city, sessions_count, browser
FROM read_csv('{users}', header = true, columns = {{
  'id': 'VARCHAR', 'member': 'BOOLEAN', 'last_seen_at': 'BIGINT', 'created_at': 'BIGINT',
  'tags': 'VARCHAR', 'email': 'VARCHAR', 'cart_count': 'DOUBLE', 'plan': 'VARCHAR',
  'city': 'VARCHAR', 'sessions_count': 'BIGINT', 'browser': 'VARCHAR'}})
""")
con.execute(f"""
CREATE TABLE events AS SELECT * FROM read_csv('{events}', header = true, columns = {{
  'user_id': 'VARCHAR', 'name': 'VARCHAR', 'created_at': 'BIGINT'}})
""")
out = []
for q in queries:
    answer = con.execute(q).fetchone()[0]
    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        con.execute(q).fetchone()
        ms.append((time.perf_counter() - t) * 1000)
    ms.sort()
    out.append([ms[len(ms) // 2], answer])
print(json.dumps(out))
