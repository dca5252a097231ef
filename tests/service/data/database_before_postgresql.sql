PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE IF NOT EXISTS "_sqlite_migrations" (
   "id" INTEGER PRIMARY KEY,
   "migration_set" TEXT,
   "name" TEXT,
   "applied_at" TEXT
);
INSERT INTO _sqlite_migrations VALUES(1,'theranode.index','m001_initial','2026-12-03 19:44:26.370649+00:00');
INSERT INTO _sqlite_migrations VALUES(2,'theranode.jobs','m001_jobs','2026-12-03 19:44:26.371535+00:00');
INSERT INTO _sqlite_migrations VALUES(3,'theranode.jobs','m002_job_retries','2026-12-03 19:44:26.376346+00:00');
INSERT INTO _sqlite_migrations VALUES(4,'theranode.jobs','m003_retry_jobs_a_shutdown_failed','2026-12-03 19:44:26.376798+00:00');
INSERT INTO _sqlite_migrations VALUES(5,'theranode.jobs','m004_job_payloads_as_json','2026-12-03 19:44:26.379034+00:00');
INSERT INTO _sqlite_migrations VALUES(6,'theranode.outbox','m001_outbox','2026-12-03 19:44:26.380349+00:00');
INSERT INTO _sqlite_migrations VALUES(7,'theranode.outcomes','m001_outcome_tables','2026-12-03 19:44:26.382955+00:00');
CREATE TABLE IF NOT EXISTS "patients" (
   "patient_key" TEXT PRIMARY KEY,
   "patient_id" TEXT,
   "issuer" TEXT,
   "first_seen" TEXT
);
INSERT INTO patients VALUES('00112233aabbccdd','P-LEGACY','','2026-11-30T10:00:00');
CREATE TABLE IF NOT EXISTS "series" (
   "series_uid" TEXT PRIMARY KEY,
   "study_uid" TEXT,
   "patient_key" TEXT REFERENCES "patients"("patient_key"),
   "kind" TEXT,
   "modality" TEXT,
   "sop_class_uid" TEXT,
   "frame_of_reference_uid" TEXT,
   "referenced_frames" TEXT,
   "acquired" TEXT,
   "injection_start" TEXT,
   "injection_time" TEXT,
   "injection_event_uid" TEXT,
   "injected_activity_mbq" REAL,
   "radionuclide" TEXT,
   "description" TEXT,
   "series_number" INTEGER,
   "instance_count" INTEGER,
   "first_received" TEXT,
   "last_received" TEXT
);
INSERT INTO series VALUES('1.2.3.4','1.2.3','00112233aabbccdd','spect','NM',NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,1,'2026-11-30T10:00:00','2026-11-30T10:00:00');
CREATE TABLE IF NOT EXISTS "instances" (
   "sop_instance_uid" TEXT PRIMARY KEY,
   "sop_class_uid" TEXT,
   "series_uid" TEXT REFERENCES "series"("series_uid"),
   "path" TEXT,
   "sha256" TEXT,
   "size" INTEGER,
   "transfer_syntax" TEXT,
   "received" TEXT,
   "calling_ae" TEXT,
   "peer" TEXT
);
INSERT INTO instances VALUES('1.2.3.4.1','1.2.840.10008.5.1.4.1.1.20','1.2.3.4','archive/00112233aabbccdd/1.2.3/1.2.3.4/1.2.3.4.1.dcm','abcd',1234,'1.2.840.10008.1.2.1','2026-11-30T10:00:00','SCANNER','10.0.0.5');
CREATE TABLE IF NOT EXISTS "conflicts" (
   "id" INTEGER PRIMARY KEY,
   "sop_instance_uid" TEXT,
   "path" TEXT,
   "sha256" TEXT,
   "received" TEXT,
   "calling_ae" TEXT,
   "peer" TEXT
);
CREATE TABLE IF NOT EXISTS "quarantine" (
   "id" INTEGER PRIMARY KEY,
   "path" TEXT,
   "sha256" TEXT,
   "status" INTEGER,
   "reason" TEXT,
   "received" TEXT,
   "calling_ae" TEXT,
   "peer" TEXT
);
CREATE TABLE IF NOT EXISTS "grouping" (
   "series_uid" TEXT PRIMARY KEY,
   "patient_key" TEXT,
   "course" INTEGER,
   "cycle" INTEGER,
   "injection" TEXT,
   "injection_source" TEXT,
   "time_point_h" REAL,
   "elapsed_h" REAL,
   "role" TEXT,
   "state" TEXT,
   "note" TEXT
);
CREATE TABLE IF NOT EXISTS "jobs" (
   "id" INTEGER PRIMARY KEY,
   "kind" TEXT NOT NULL,
   "target" TEXT NOT NULL,
   "patient_key" TEXT,
   "label" TEXT,
   "fingerprint" TEXT NOT NULL,
   "state" TEXT NOT NULL,
   "version" INTEGER,
   "created_at" TEXT NOT NULL,
   "started_at" TEXT,
   "finished_at" TEXT,
   "attempts" INTEGER,
   "payload" BLOB,
   "message" TEXT,
   "result_dir" TEXT,
   "log_path" TEXT
, "worker_deaths" INTEGER NOT NULL DEFAULT 0, "last_error" TEXT);
INSERT INTO jobs VALUES(1,'cycle','cycle|00112233aabbccdd|1|1','00112233aabbccdd','course 1 cycle 1','f1','queued',NULL,'2026-11-30T10:05:00',NULL,NULL,0,X'7b7d','',NULL,NULL,0,NULL);
CREATE TABLE IF NOT EXISTS "generations" (
   "target" TEXT PRIMARY KEY,
   "generation" INTEGER
);
CREATE TABLE IF NOT EXISTS "result_objects" (
   "id" INTEGER PRIMARY KEY,
   "job_id" INTEGER,
   "path" TEXT,
   "sop_class_uid" TEXT,
   "sop_instance_uid" TEXT,
   "series_instance_uid" TEXT,
   "modality" TEXT,
   "description" TEXT,
   "created_at" TEXT
);
CREATE TABLE IF NOT EXISTS "deliveries" (
   "object_id" INTEGER,
   "destination" TEXT,
   "state" TEXT,
   "attempts" INTEGER,
   "last_status" INTEGER,
   "last_error" TEXT,
   "updated_at" TEXT,
   PRIMARY KEY ("object_id", "destination")
);
CREATE TABLE IF NOT EXISTS "destinations" (
   "name" TEXT PRIMARY KEY,
   "failures" INTEGER,
   "next_attempt_at" TEXT
);
CREATE TABLE IF NOT EXISTS "outcome_files" (
   "sha256" TEXT PRIMARY KEY,
   "file_name" TEXT,
   "kind" TEXT,
   "imported_at" TEXT,
   "n_rows" INTEGER,
   "warnings" TEXT
);
CREATE TABLE IF NOT EXISTS "outcome_patients" (
   "patient_id" TEXT PRIMARY KEY,
   "sex" TEXT NOT NULL,
   "birth_date" TEXT,
   "age_at_start_y" REAL,
   "first_injection_date" TEXT NOT NULL,
   "progression_date" TEXT,
   "death_date" TEXT,
   "last_followup_date" TEXT,
   "recist_m3" TEXT,
   "source_sha256" TEXT
);
CREATE TABLE IF NOT EXISTS "outcome_cycles" (
   "patient_id" TEXT REFERENCES "outcome_patients"("patient_id"),
   "cycle" INTEGER,
   "admin_date" TEXT,
   "activity_gbq" REAL,
   "source_sha256" TEXT,
   PRIMARY KEY ("patient_id", "cycle")
);
CREATE TABLE IF NOT EXISTS "outcome_lesions" (
   "patient_id" TEXT REFERENCES "outcome_patients"("patient_id"),
   "lesion_id" TEXT,
   "site" TEXT,
   "vol_bl_cm3" REAL,
   "ct_bl_date" TEXT,
   "vol_m3_cm3" REAL,
   "ct_m3_date" TEXT,
   "source_sha256" TEXT,
   PRIMARY KEY ("patient_id", "lesion_id")
);
CREATE TABLE IF NOT EXISTS "outcome_labs" (
   "patient_id" TEXT REFERENCES "outcome_patients"("patient_id"),
   "date" TEXT,
   "analyte" TEXT,
   "value" REAL,
   "unit" TEXT,
   "lln" REAL,
   "uln" REAL,
   "given_value" REAL,
   "given_unit" TEXT,
   "source_sha256" TEXT,
   PRIMARY KEY ("patient_id", "date", "analyte")
);
CREATE TABLE IF NOT EXISTS "outcome_doses" (
   "patient_id" TEXT REFERENCES "outcome_patients"("patient_id"),
   "cycle" INTEGER,
   "voi" TEXT,
   "kind" TEXT,
   "ad_gy" REAL,
   "source_sha256" TEXT,
   PRIMARY KEY ("patient_id", "cycle", "voi")
);
CREATE TABLE IF NOT EXISTS "outcome_warnings" (
   "id" INTEGER PRIMARY KEY,
   "sha256" TEXT,
   "file_name" TEXT,
   "line" INTEGER,
   "column" TEXT,
   "message" TEXT
);
CREATE UNIQUE INDEX "idx__sqlite_migrations_migration_set_name"
    ON "_sqlite_migrations" ("migration_set", "name");
CREATE INDEX "idx_series_patient_key"
    ON "series" ("patient_key");
CREATE INDEX "idx_instances_series_uid"
    ON "instances" ("series_uid");
CREATE INDEX "idx_grouping_patient_key"
    ON "grouping" ("patient_key");
CREATE UNIQUE INDEX "idx_jobs_target_fingerprint"
    ON "jobs" ("target", "fingerprint");
CREATE INDEX "idx_jobs_state"
    ON "jobs" ("state");
CREATE INDEX "idx_result_objects_job_id"
    ON "result_objects" ("job_id");
CREATE INDEX "idx_deliveries_destination_state"
    ON "deliveries" ("destination", "state");
CREATE INDEX "idx_outcome_warnings_sha256"
    ON "outcome_warnings" ("sha256");
COMMIT;
