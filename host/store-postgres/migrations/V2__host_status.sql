-- What each host serves, for GET /v1/cluster: connector instance → sha256, and
-- the digest of the policies in force.
ALTER TABLE ebb_hosts ADD COLUMN connectors jsonb NOT NULL DEFAULT '{}';
ALTER TABLE ebb_hosts ADD COLUMN policies text;
