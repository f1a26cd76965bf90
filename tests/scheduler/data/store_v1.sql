-- A scheduler.db written by the first store (schema 1, git 6bca8ee scheduler/store.py):
-- sample_models() and sample_servers() of tests/scheduler/test_store.py. Do not regenerate.
BEGIN TRANSACTION;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO "meta" VALUES('schema','1');
CREATE TABLE models (name TEXT PRIMARY KEY, record TEXT NOT NULL);
INSERT INTO "models" VALUES('gone','{"deleted": true, "versions": [{"number": 1, "spec": "CgYKBGdvbmUSHwoQZ3M6Ly9tb2RlbHMvZ29uZSIHc2tsZWFybigKMgAaBAgBEAE=", "server": "mlserver", "state": "ModelTerminating", "reason": "", "timestamp": 1700000000.125, "schedule_error": "", "replicas": {"1": ["UnloadRequested", "", 1700000000.125]}}]}');
INSERT INTO "models" VALUES('iris','{"deleted": false, "versions": [{"number": 1, "spec": "CgYKBGlyaXMSIAoQZ3M6Ly9tb2RlbHMvaXJpcyIHc2tsZWFybijoBzIAGgQIARAB", "server": "mlserver", "state": "ModelAvailable", "reason": "", "timestamp": 1700000000.125, "schedule_error": "", "replicas": {"0": ["Draining", "moving", 1700000000.125]}}, {"number": 2, "spec": "CgYKBGlyaXMSIAoQZ3M6Ly9tb2RlbHMvaXJpcyIHc2tsZWFybijQDzIAGgQIAhAB", "server": "mlserver", "state": "ModelProgressing", "reason": "1/2 replicas", "timestamp": 1700000003.125, "schedule_error": "", "replicas": {"0": ["Available", "", 1700000001.125], "1": ["Loading", "", 1700000002.125]}}]}');
INSERT INTO "models" VALUES('huge','{"deleted": false, "versions": [{"number": 1, "spec": "CgYKBGh1Z2USKgoQZ3M6Ly9tb2RlbHMvaHVnZSIHc2tsZWFybiiAoJSljR0yBnRyaXRvbhoECAMQAQ==", "server": "", "state": "ScheduleFailed", "reason": "no server fits", "timestamp": 1700000000.125, "schedule_error": "not enough memory on triton", "replicas": {}}]}');
CREATE TABLE servers (name TEXT PRIMARY KEY, record TEXT NOT NULL);
INSERT INTO "servers" VALUES('triton','{"shared": false, "expected_replicas": -1, "min_replicas": 0, "max_replicas": 0, "replicas": {"0": {"config": "Cgh0cml0b24tMBCQPxicSiBkKgdza2xlYXJuKgd4Z2Jvb3N0MAo=", "available_memory": 50}}}');
INSERT INTO "servers" VALUES('mlserver','{"shared": true, "expected_replicas": 1, "min_replicas": 1, "max_replicas": 3, "replicas": {"0": {"config": "CgptbHNlcnZlci0wEJA/GJxKIKAfKgdza2xlYXJuKgd4Z2Jvb3N0MAo=", "available_memory": 2000}, "1": {"config": "CgptbHNlcnZlci0xEJE/GJ1KIKAfKgdza2xlYXJuKgd4Z2Jvb3N0MAo=", "available_memory": 2000}}}');
COMMIT;
