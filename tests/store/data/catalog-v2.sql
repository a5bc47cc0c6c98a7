-- A version-2 catalog as icl wrote it before schema 3 (store/ at 9082bf3): experiments
-- 'base' and 'icl', one evaluation, two FGSM attacks, one round metric. sqlite3 .dump.
BEGIN TRANSACTION;
CREATE TABLE attacks (
	id INTEGER NOT NULL, 
	experiment_id INTEGER NOT NULL, 
	round INTEGER NOT NULL, 
	against_experiment VARCHAR(64) NOT NULL, 
	against_round INTEGER NOT NULL, 
	eps FLOAT NOT NULL, 
	counts JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (experiment_id, round, against_experiment, against_round, eps), 
	FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE
);
INSERT INTO "attacks" VALUES(1,2,1,'base',1,0.125,'{"made": 10, "fool_self": 4, "fool_other": 2}','2026-12-01 20:18:43.399570');
INSERT INTO "attacks" VALUES(2,2,1,'base',1,0.25,'{"made": 10, "fool_self": 7, "fool_other": 5}','2026-12-01 20:18:43.415504');
CREATE TABLE checkpoints (
	id INTEGER NOT NULL, 
	experiment_id INTEGER NOT NULL, 
	round INTEGER NOT NULL, 
	path TEXT NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	parent_id INTEGER, 
	parent_sha256 VARCHAR(64), 
	config_hash VARCHAR(64), 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (experiment_id, round), 
	FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE, 
	FOREIGN KEY(parent_id) REFERENCES checkpoints (id) ON DELETE SET NULL
);
CREATE TABLE evaluations (
	id INTEGER NOT NULL, 
	experiment_id INTEGER NOT NULL, 
	round INTEGER NOT NULL, 
	split VARCHAR(32) NOT NULL, 
	error FLOAT NOT NULL, 
	per_class JSON NOT NULL, 
	n INTEGER NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (experiment_id, round, split), 
	FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE
);
INSERT INTO "evaluations" VALUES(1,2,1,'test',0.25,'[0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]',100,'2026-12-01 20:18:43.377797');
CREATE TABLE experiments (
	id INTEGER NOT NULL, 
	name VARCHAR(64) NOT NULL, 
	config JSON NOT NULL, 
	config_hash VARCHAR(64) NOT NULL, 
	method VARCHAR(32), 
	parent_name VARCHAR(64), 
	parent_round INTEGER, 
	mlflow_run_id VARCHAR(64), 
	created_at DATETIME NOT NULL, 
	data_fingerprint VARCHAR(64), 
	PRIMARY KEY (id), 
	UNIQUE (name)
);
INSERT INTO "experiments" VALUES(1,'base','{"method": "baseline", "seed": 0}','6c7fed00aba906dd','baseline',NULL,NULL,NULL,'2026-12-01 20:18:43.355813','cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd');
INSERT INTO "experiments" VALUES(2,'icl','{"method": "icl", "seed": 0}','f0e55410f1764b52','icl',NULL,NULL,NULL,'2026-12-01 20:18:43.360685',NULL);
CREATE TABLE round_metrics (
	id INTEGER NOT NULL, 
	experiment_id INTEGER NOT NULL, 
	round INTEGER NOT NULL, 
	name VARCHAR(64) NOT NULL, 
	value FLOAT, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (experiment_id, round, name), 
	FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE
);
INSERT INTO "round_metrics" VALUES(1,2,1,'grad_norm_max',3.5,'2026-12-01 20:18:43.424480');
CREATE TABLE schema_version (
	version INTEGER NOT NULL, 
	PRIMARY KEY (version)
);
INSERT INTO "schema_version" VALUES(2);
CREATE TABLE shards (
	id INTEGER NOT NULL, 
	experiment_id INTEGER NOT NULL, 
	round INTEGER NOT NULL, 
	version INTEGER NOT NULL, 
	active BOOLEAN NOT NULL, 
	path TEXT NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	count INTEGER NOT NULL, 
	sampler_config JSON NOT NULL, 
	seed INTEGER, 
	source_checkpoint_sha256 VARCHAR(64), 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (experiment_id, round, version), 
	FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE
);
CREATE TABLE steps (
	id INTEGER NOT NULL, 
	experiment_id INTEGER NOT NULL, 
	name VARCHAR(32) NOT NULL, 
	round INTEGER, 
	config JSON NOT NULL, 
	config_hash VARCHAR(64) NOT NULL, 
	started_at DATETIME NOT NULL, 
	finished_at DATETIME, 
	seconds FLOAT, 
	state VARCHAR(16) NOT NULL, 
	message TEXT, 
	pid INTEGER, 
	host VARCHAR(255), 
	PRIMARY KEY (id), 
	FOREIGN KEY(experiment_id) REFERENCES experiments (id) ON DELETE CASCADE
);
CREATE INDEX ix_shards_experiment_id ON shards (experiment_id);
CREATE INDEX ix_checkpoints_experiment_id ON checkpoints (experiment_id);
CREATE INDEX ix_evaluations_experiment_id ON evaluations (experiment_id);
CREATE INDEX ix_attacks_experiment_id ON attacks (experiment_id);
CREATE INDEX ix_round_metrics_experiment_id ON round_metrics (experiment_id);
CREATE INDEX ix_steps_experiment_id ON steps (experiment_id);
COMMIT;
