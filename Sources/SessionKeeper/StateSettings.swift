import ConfigFile
import Foundation

/// `state:` — where the state lives, sealed under which key, and how long a store call may take.
public struct StateSettings: ConfigSection, Equatable {
    public let directory: String
    /// Which engine holds the state (`state.backend`).
    public let backend: StateBackendKind
    /// The PostgreSQL store (`state.postgresql`), with `backend: postgresql`.
    public let postgres: PostgresSettings?
    /// The master key's file (`state.master_key_file`), when configured: then it must exist, never generated.
    public let masterKeyFile: String?
    /// Each store call's deadline (`state.timeout`, default 2 s): past it the call fails with `store_timeout`.
    public let timeout: Duration
    /// `$CREDENTIALS_DIRECTORY`: where systemd put the master key (`master-key`), when it did.
    public let credentialsDirectory: String?

    public static let configKeys: [ConfigKeys] = [
        .mapping("state", ["directory", "backend", "master_key_file", "postgresql", "timeout"]),
    ]

    public init(reading config: ConfigReader) throws(ConfigurationError) {
        let credentials = config.credentialsDirectory
        credentialsDirectory = credentials
        directory = try config.string(["state", "directory"]) ?? config.environment["STATE_DIRECTORY"]?
            .split(separator: ":").first.map(String.init) ?? "/var/lib/bunq-sessiond"
        let backendName = try config.string(["state", "backend"]) ?? "sqlite"
        guard let backend = StateBackendKind(rawValue: backendName) else {
            throw config.fail("state.backend", "must be sqlite or postgresql, not '\(backendName)'")
        }
        self.backend = backend
        masterKeyFile = try config.string(["state", "master_key_file"])
        if let masterKeyFile, !masterKeyFile.hasPrefix("/") {
            throw config.fail("state.master_key_file", "must be an absolute path")
        }
        if let text = try config.string(["state", "timeout"]) {
            guard let seconds = ConfigReader.seconds(text), seconds >= 0.05, seconds <= 300 else {
                throw config.fail("state.timeout", "must be a duration from 50ms to 300s (2s, 500ms, 1.5), not '\(text)'")
            }
            timeout = .milliseconds(Int64((seconds * 1_000).rounded()))
        } else {
            timeout = .seconds(2)
        }
        guard backend == .postgresql else {
            if config.node(["state", "postgresql"]).map({ !$0.isNull }) == true {
                throw config.fail("state.postgresql", "is only read with state.backend: postgresql")
            }
            postgres = nil
            return
        }
        if let section = config.node(["state", "postgresql"]), !section.isNull {
            guard let entries = section.entries else { throw config.fail("state.postgresql", "must be a mapping") }
            for (key, _) in entries where !["url", "password_credential", "password_file"].contains(key) {
                throw config.fail("state.postgresql.\(key)", "is not a known key")
            }
        }
        guard let url = try config.string(["state", "postgresql", "url"]) else {
            throw config.fail("state.postgresql.url", "is required with state.backend: postgresql")
        }
        // Several daemons share the store, so they must share the key: one generated here could never be theirs.
        guard masterKeyFile != nil || credentials.map({ FileManager.default.fileExists(atPath: $0 + "/master-key") }) == true else {
            throw config.fail("state.master_key_file", "is required with state.backend: postgresql (or the master-key "
                + "credential): every daemon on the store needs the same key, so none may generate its own")
        }
        var password: String?
        if let name = try config.string(["state", "postgresql", "password_credential"]) {
            guard let credentials else {
                throw config.fail("state.postgresql.password_credential", "names a credential, but $CREDENTIALS_DIRECTORY is not set")
            }
            password = try config.readSecret("state.postgresql.password_credential", path: credentials + "/" + name)
        } else if let path = try config.string(["state", "postgresql", "password_file"]) {
            password = try config.readSecret("state.postgresql.password_file", path: path)
        }
        password = password?.trimmingCharacters(in: .newlines)
        do {
            postgres = try PostgresSettings.parse(url: url, password: password)
        } catch {
            throw config.fail("state.postgresql.url", error.description)
        }
    }
}
