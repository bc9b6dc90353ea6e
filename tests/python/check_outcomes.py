"""The outcome log as data scientists read it: DuckDB and pandas, on the files as they are.

    python tests/python/check_outcomes.py DIR EXPECTED_RECORDS
Prints one JSON summary line; exits non-zero if either reader fails or disagrees.
"""

import glob
import json
import sys

import duckdb
import pandas as pd

directory, expected = sys.argv[1], int(sys.argv[2])
files = sorted(glob.glob(f"{directory}/*.jsonl"))

frame = pd.concat([pd.read_json(f, lines=True) for f in files], ignore_index=True)
assert len(frame) == expected, f"pandas read {len(frame)} records, expected {expected}"
for column in ["request_id", "timestamp", "model", "answered_by", "results"]:
    assert column in frame.columns, f"pandas: no column {column}"

rows = duckdb.sql(f"select count(*) from read_json_auto('{directory}/*.jsonl')").fetchall()[0][0]
assert rows == expected, f"duckdb read {rows} records, expected {expected}"
# The paired shape is queryable: one row per (request, model version).
per_version = duckdb.sql(
    f"""select r.version, r.status, count(*) as n
        from (select unnest(results) as r from read_json_auto('{directory}/*.jsonl'))
        group by all order by all"""
).fetchall()
print(json.dumps({"pandas_rows": len(frame), "duckdb_rows": rows, "per_version": per_version}))
