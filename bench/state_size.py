"""Bytes of table state per customer, after the scenario and after a heavy year of one customer.

    .venv/bin/python bench/state_size.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import io, orjson
from datetime import UTC, datetime, timedelta
from pipeline.config import load_config
from pipeline.replay import Replay
from tests.integration import scenario
cfg = load_config()
r = Replay(cfg, errors=io.StringIO())
ev = scenario.build(scenario.now(), noise=2000)
list(r.feed([orjson.dumps(e) for e in ev])); list(r.finish())
sizes = sorted(len(v) for v in r.states.values())
print("scenario customers", len(sizes), "mean", sum(sizes)//len(sizes), "p99", sizes[int(len(sizes)*.99)], "max", sizes[-1])
# a heavy customer: a year of 10 contacts a day on 5 categories, complaints weekly, 3 orders a week
r = Replay(cfg, errors=io.StringIO()); t0 = datetime(2026,1,1,tzinfo=UTC); lines=[]; n=0
for day in range(365):
    for k in range(10):
        n+=1; lines.append(orjson.dumps({"event_id":f"h{n}","type":"interaction.contact","customer_id":"heavy","occurred_at":(t0+timedelta(days=day,minutes=k*30)).isoformat(),"channel":"call","category":f"cat-{k%5}"}))
    if day%7==0:
        n+=1; lines.append(orjson.dumps({"event_id":f"h{n}","type":"interaction.complaint","customer_id":"heavy","occurred_at":(t0+timedelta(days=day,hours=8)).isoformat(),"channel":"call","category":"x"}))
    if day%2==0:
        n+=1; lines.append(orjson.dumps({"event_id":f"h{n}","type":"order.shipped","customer_id":"heavy","occurred_at":(t0+timedelta(days=day,hours=9)).isoformat(),"order_id":f"o{day}"}))
        n+=1; lines.append(orjson.dumps({"event_id":f"h{n}","type":"order.delivered","customer_id":"heavy","occurred_at":(t0+timedelta(days=day,hours=30)).isoformat(),"order_id":f"o{day}"}))
list(r.feed(lines))
print("heavy customer events", n, "state bytes", len(r.states["heavy"]))
import collections
s = orjson.loads(r.states["heavy"]); print({k: len(orjson.dumps(v)) for k,v in s.items()}); print({k: len(orjson.dumps(v[1])) for k,v in s["rules"].items()})
