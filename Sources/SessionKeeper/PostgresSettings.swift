import Foundation

/// Where the PostgreSQL store is, from `state.postgresql.url` (`postgresql://USER@HOST[:PORT]/DATABASE?sslmode=…`)
/// and the password from a credential or file: never in the URL, which ends up in logs and process listings.
public struct PostgresSettings: Sendable, Equatable {
    public enum TLSMode: String, Sendable {
        /// No TLS: only to a loopback host.
        case disable
        /// Encrypted, server certificate not verified.
        case require
        /// Encrypted, server certificate verified against the system's CAs and the host name.
        case verifyFull = "verify-full"
    }

    public let host: String
    public let port: Int
    public let username: String
    public let database: String
    public let tls: TLSMode
    public let password: String?

    public init(host: String, port: Int, username: String, database: String, tls: TLSMode, password: String?) {
        self.host = host
        self.port = port
        self.username = username
        self.database = database
        self.tls = tls
        self.password = password
    }

    /// Parses the URL; the error says what is wrong with it (never echoing a password).
    public static func parse(url text: String, password: String?) throws(PostgresSettingsError) -> PostgresSettings {
        guard let url = URLComponents(string: text), ["postgresql", "postgres"].contains(url.scheme ?? "") else {
            throw PostgresSettingsError("must be a postgresql://USER@HOST[:PORT]/DATABASE URL")
        }
        guard url.password == nil else {
            throw PostgresSettingsError("must not hold a password: use state.postgresql.password_credential or password_file")
        }
        guard let host = url.host, !host.isEmpty else { throw PostgresSettingsError("names no host") }
        guard let username = url.user, !username.isEmpty else { throw PostgresSettingsError("names no user (USER@HOST)") }
        let database = String(url.path.drop { $0 == "/" })
        guard !database.isEmpty, !database.contains("/") else { throw PostgresSettingsError("names no database (/DATABASE)") }
        let loopback = host == "localhost" || host == "::1" || host.hasPrefix("127.")
        var tls: TLSMode = loopback ? .disable : .verifyFull
        for item in url.queryItems ?? [] {
            guard item.name == "sslmode" else { throw PostgresSettingsError("has an unknown parameter '\(item.name)' (only sslmode)") }
            guard let mode = item.value.flatMap(TLSMode.init(rawValue:)) else {
                throw PostgresSettingsError("sslmode must be disable, require or verify-full")
            }
            tls = mode
        }
        guard tls != .disable || loopback else {
            throw PostgresSettingsError("sslmode=disable is only for a loopback host: tokens and sealed keys would cross the network in the clear")
        }
        return PostgresSettings(host: host, port: url.port ?? 5432, username: username, database: database, tls: tls,
                                password: password)
    }

    /// The URL without a password, for messages.
    public var location: String { "postgresql://\(username)@\(host):\(port)/\(database)" }
}

public struct PostgresSettingsError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
