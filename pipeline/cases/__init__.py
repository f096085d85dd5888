"""The case view: each customer's exceptions folded into cases (book.py), shown to staff and to
the customer (views.py) and on the CSR page (page.py), in words from the config (messages.py).
Pure: no Faust, no Kafka, no clock; the runtime keeps the books in a table and serves the views
(docs/cases.md)."""
