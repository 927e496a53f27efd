-- Files every host of the store keeps in a folder of its own (the plugins folder,
-- the policies): content-addressed blobs, and each file's current blob by area
-- and name (NULL: deleted, so the deletion reaches every host).
CREATE TABLE ebb_blobs (
    sha256   text  PRIMARY KEY,
    content  bytea NOT NULL
);
CREATE TABLE ebb_files (
    area        text   NOT NULL,
    name        text   NOT NULL,
    sha256      text   REFERENCES ebb_blobs (sha256),
    updated_at  bigint NOT NULL,
    PRIMARY KEY (area, name)
);
