import BunqAPI
import Foundation
import Yams

/// A configuration problem: the file, the key and the reason. The daemon exits 78 (EX_CONFIG) with it.
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    public let file: String
    public let key: String
    public let reason: String

    public init(file: String, key: String, reason: String) {
        self.file = file
        self.key = key
        self.reason = reason
    }

    public var description: String { "\(file): \(key): \(reason)" }
}

/// The daemon's configuration (`/etc/bunq-sessiond/bunq-sessiond.yaml`), validated: every key documented in
/// `config/bunq-sessiond.yaml`. Every scalar key can be overridden by `BUNQ_SESSIOND_` + its path in upper snake
/// case; secrets can come from `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`).
public struct KeeperConfiguration: Sendable {
    public struct Provider: Sendable {
        public let certificatePath: String
        public let certificatePEM: String
        /// Where the private key came from: a file path or `credential eidas-key`.
        public let privateKeySource: String
        public let privateKeyPEM: String
        public let chainPath: String?
        public let chainPEM: String?
        public let oauthRedirectURIs: [String]
    }

    public struct APIKeyIdentity: Sendable, Equatable {
        public let name: String
        /// The API key. Secret.
        public let key: String
    }

    public let file: String
    public let endpoints: BunqEndpoints
    public let environment: BunqEndpoints.Environment
    public let rateLimits: BunqRateLimiter.Mode
    /// Testing only: multiplies bunq's rate-limit windows on our side (pair with `bunq-sandbox --rate-limit-scale`).
    public let rateLimitScale: Double
    public let psd2FirstSessionTimeout: Int
    /// `permitted_ips` of every device this daemon registers: this host's (or cluster's) egress addresses, or
    /// `"*"` (any). Applies to devices registered from now on; existing ones keep what they were given.
    public let permittedIPs: [String]
    /// The local address calls to bunq leave from (`bunq.source_address`); nil: the kernel's choice.
    public let sourceAddress: String?
    public let socketPath: String
    /// Connections served at once; more are answered with an error and closed.
    public let maxConnections: Int
    /// Connections one uid may hold at once (`socket.max_connections_per_uid`): one caller cannot fill the socket.
    public let maxConnectionsPerUID: Int
    /// Seconds without a complete request after which a connection (not subscribed, nothing outstanding) is closed.
    public let idleTimeout: Int
    /// Seconds a request may take from its first byte to its newline (`socket.request_timeout`).
    public let requestTimeout: Int
    /// Seconds a connection may leave what it is sent unread before it is closed (`socket.send_timeout`).
    public let sendTimeout: Int
    /// Threads serving the sockets' I/O (`socket.event_loops`). Default: half the cores, at least one; on 2
    /// cores one loop measured the better tail (`make bench`), as the clients need the other core.
    public let eventLoops: Int
    public let stateDirectory: String
    /// Which engine holds the state (`state.backend`).
    public let backend: StateBackendKind
    /// The PostgreSQL store (`state.postgresql`), with `backend: postgresql`.
    public let postgres: PostgresSettings?
    /// The master key's file (`state.master_key_file`), when configured: then it must exist, never generated.
    public let masterKeyFile: String?
    /// Each store call's deadline (`state.timeout`, default 2 s): past it the call fails with `store_timeout`.
    public let storeTimeout: Duration
    /// This daemon's place in the cluster of daemons on the store (`cluster:`); with PostgreSQL only.
    public let cluster: ClusterSettings?
    /// Where Prometheus scrapes `GET /metrics` (`metrics.listen`); nil: no metrics.
    public let metricsListen: MetricsListen?
    /// The bunq API proxy (`proxy:`); nil: off.
    public let proxy: ProxySettings?
    public let credentialsDirectory: String?
    public let provider: Provider?
    public let apiKeys: [APIKeyIdentity]
    public let policy: RenewalPolicy
    public let maxConcurrentRenewals: Int
    /// `session.renew` within this many seconds of the last renewal returns the current session (admins may
    /// force): a caller cannot spend the session-server budget others need.
    public let minManualRenewalInterval: TimeInterval
    public let deviceDescription: String
    /// Who may use what over the socket (`access:`).
    public let access: AccessRules

    /// Every key the file may hold, as paths; nested `api_keys` items and `access` are checked separately.
    static let scalarKeys: [[String]] = [
        ["bunq", "environment"], ["bunq", "api_base_url"], ["bunq", "oauth_authorize_url"], ["bunq", "oauth_token_url"],
        ["bunq", "ca_file"], ["bunq", "rate_limits"], ["bunq", "rate_limit_scale"], ["bunq", "psd2_first_session_timeout"],
        ["bunq", "permitted_ips"], ["bunq", "source_address"],
        ["socket", "path"], ["socket", "max_connections"], ["socket", "max_connections_per_uid"], ["socket", "idle_timeout"],
        ["socket", "request_timeout"], ["socket", "send_timeout"], ["socket", "event_loops"], ["state", "directory"],
        ["state", "backend"], ["state", "master_key_file"], ["state", "postgresql"], ["state", "timeout"],
        ["cluster", "instance"], ["cluster", "egress_group"], ["cluster", "lease_seconds"], ["metrics", "listen"],
        ["proxy", "socket"], ["proxy", "max_body_bytes"], ["proxy", "timeout"], ["proxy", "max_connections"],
        ["proxy", "max_connections_per_uid"], ["proxy", "idle_timeout"],
        ["provider", "certificate"], ["provider", "private_key"], ["provider", "certificate_chain"],
        ["provider", "oauth_redirect_uris"],
        ["renewal", "safety_margin"], ["renewal", "backoff_base"], ["renewal", "backoff_max"], ["renewal", "max_concurrent"],
        ["renewal", "min_manual_interval"],
        ["device_description"],
    ]
    static let sections: Set<String> = ["bunq", "socket", "state", "provider", "api_keys", "access", "renewal",
                                        "device_description", "cluster", "metrics", "proxy"]

    /// Reads, overrides from `environment`, and validates `file`.
    public static func load(file: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigurationError) -> KeeperConfiguration {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw ConfigurationError(file: file, key: "(file)", reason: "cannot be read")
        }
        let composed: Node?
        do {
            composed = try Yams.compose(yaml: String(decoding: data, as: UTF8.self))
        } catch {
            throw ConfigurationError(file: file, key: "(syntax)", reason: "is not valid YAML: \(Self.describe(error))")
        }
        // An empty or comment-only file is a mistake (a truncated write, a wrong path), never "no identities":
        // running with none must be said explicitly, `api_keys: []`.
        guard let root = composed, root.mapping.map({ !$0.isEmpty }) ?? true else {
            throw ConfigurationError(file: file, key: "(file)", reason: "is empty (or only comments); "
                + "to run with no API-key identities, say so: api_keys: []")
        }
        var reader = Reader(file: file, root: root, environment: environment)
        try reader.checkKeys()
        return try reader.build()
    }

    /// A YAML error by its position and problem only: libyaml's own description quotes the file's bytes, which
    /// may hold a secret pasted in the wrong place.
    static func describe(_ error: any Error) -> String {
        guard let error = error as? YamlError else { return "unreadable" }
        switch error {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _),
             .composer(_, let problem, let mark, _):
            return "line \(mark.line), column \(mark.column): \(problem)"
        case .reader(let problem, let offset, _, _):
            return "\(problem)" + (offset.map { " at byte \($0)" } ?? "")
        case .duplicatedKeysInMapping(let duplicates, let context):
            return "line \(context.mark.line), column \(context.mark.column): duplicated keys \(duplicates.joined(separator: ", "))"
        default:
            return "unreadable YAML"
        }
    }

    /// Reads one configuration: YAML values with environment overrides on top.
    struct Reader {
        let file: String
        var root: Node
        let environment: [String: String]

        func fail(_ key: String, _ reason: String) -> ConfigurationError {
            ConfigurationError(file: file, key: key, reason: reason)
        }

        /// A duration in seconds: a number of seconds, or a number with `ms`, `s` or `m`.
        static func seconds(_ text: String) -> Double? {
            let trimmed = text.trimmingCharacters(in: .whitespaces)
            for (suffix, scale) in [("ms", 0.001), ("s", 1.0), ("m", 60.0)] where trimmed.hasSuffix(suffix) {
                return Double(trimmed.dropLast(suffix.count)).map { $0 * scale }.flatMap { $0.isFinite ? $0 : nil }
            }
            return Double(trimmed).flatMap { $0.isFinite ? $0 : nil }
        }

        static func environmentName(_ path: [String]) -> String {
            "BUNQ_SESSIOND_" + path.joined(separator: "_").uppercased()
        }

        func node(_ path: [String]) -> Node? {
            var current: Node? = root
            for key in path { current = current?.mapping?[Node(key)] }
            return current
        }

        /// A scalar: the environment override, else the YAML value, else nil.
        func string(_ path: [String]) throws(ConfigurationError) -> String? {
            if let value = environment[Self.environmentName(path)] { return value }
            guard let node = node(path), !node.isNull else { return nil }
            guard let scalar = node.scalar else { throw fail(path.joined(separator: "."), "must be a single value") }
            return scalar.string
        }

        func int(_ path: [String], default value: Int, range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
            guard let text = try string(path) else { return value }
            guard let number = Int(text), range.contains(number) else {
                throw fail(path.joined(separator: "."), "must be a whole number from \(range.lowerBound) to \(range.upperBound), not '\(text)'")
            }
            return number
        }

        /// A list of strings: YAML sequence, or a comma-separated environment override.
        func strings(_ path: [String]) throws(ConfigurationError) -> [String] {
            if let value = environment[Self.environmentName(path)] {
                return value.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            }
            guard let node = node(path), !node.isNull else { return [] }
            guard let sequence = node.sequence else { throw fail(path.joined(separator: "."), "must be a list") }
            var values: [String] = []
            for item in sequence {
                guard let scalar = item.scalar?.string else { throw fail(path.joined(separator: "."), "must be a list of strings") }
                values.append(scalar)
            }
            return values
        }

        /// Refuses keys nobody reads: a typo must not silently do nothing.
        func checkKeys() throws(ConfigurationError) {
            guard let mapping = root.mapping else {
                if root.isNull { return }
                throw fail("(root)", "must be a mapping of sections")
            }
            let known = Set(KeeperConfiguration.scalarKeys.map { $0.joined(separator: ".") })
            for (key, value) in mapping {
                let name = key.string ?? "?"
                guard KeeperConfiguration.sections.contains(name) else {
                    throw fail(name, "is not a known section (known: \(KeeperConfiguration.sections.sorted().joined(separator: ", ")))")
                }
                guard name != "api_keys", name != "access", name != "device_description", !value.isNull else { continue }
                guard let section = value.mapping else { throw fail(name, "must be a mapping") }
                for (subkey, _) in section where !known.contains("\(name).\(subkey.string ?? "?")") {
                    throw fail("\(name).\(subkey.string ?? "?")", "is not a known key")
                }
            }
            if let postgresql = node(["state", "postgresql"]), !postgresql.isNull {
                guard let section = postgresql.mapping else { throw fail("state.postgresql", "must be a mapping") }
                for (subkey, _) in section where !["url", "password_credential", "password_file"].contains(subkey.string ?? "?") {
                    throw fail("state.postgresql.\(subkey.string ?? "?")", "is not a known key")
                }
            }
        }

        func readSecret(_ key: String, path: String) throws(ConfigurationError) -> String {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw fail(key, "the file \(path) cannot be read")
            }
            return String(decoding: data, as: UTF8.self)
        }

        mutating func build() throws(ConfigurationError) -> KeeperConfiguration {
            let environmentName = try string(["bunq", "environment"]) ?? "sandbox"
            guard let bunqEnvironment = BunqEndpoints.Environment(rawValue: environmentName) else {
                throw fail("bunq.environment", "must be sandbox or production, not '\(environmentName)'")
            }
            let preset = BunqEndpoints.preset(bunqEnvironment)
            let apiBase = try string(["bunq", "api_base_url"]) ?? preset.apiBaseURL
            let authorize = try string(["bunq", "oauth_authorize_url"]) ?? preset.oauthAuthorizeURL
            let token = try string(["bunq", "oauth_token_url"]) ?? preset.oauthTokenURL
            let caFile = try string(["bunq", "ca_file"])
            let endpoints: BunqEndpoints
            do {
                endpoints = try BunqEndpoints(apiBaseURL: apiBase, oauthAuthorizeURL: authorize, oauthTokenURL: token,
                                              caFile: caFile)
            } catch {
                throw fail("bunq.\(error.key)", "\(error.url) \(error.reason)")
            }
            if let caFile = endpoints.caFile, !FileManager.default.isReadableFile(atPath: caFile) {
                throw fail("bunq.ca_file", "the file \(caFile) cannot be read")
            }
            let limitsName = try string(["bunq", "rate_limits"]) ?? "bunq"
            guard let rateLimits = BunqRateLimiter.Mode(rawValue: limitsName) else {
                throw fail("bunq.rate_limits", "must be bunq or unlimited, not '\(limitsName)'")
            }
            let scaleText = try string(["bunq", "rate_limit_scale"])
            var rateLimitScale = 1.0
            if let scaleText {
                guard let scale = Double(scaleText), scale >= 0.001, scale <= 1 else {
                    throw fail("bunq.rate_limit_scale", "must be a number from 0.001 to 1, not '\(scaleText)'")
                }
                guard rateLimits == .bunq else {
                    throw fail("bunq.rate_limit_scale", "scales bunq's limits: it cannot be used with rate_limits: unlimited")
                }
                rateLimitScale = scale
            }
            let firstSession = try int(["bunq", "psd2_first_session_timeout"], default: 3_600, range: 1...86_400)
            var permittedIPs = ["*"]
            if node(["bunq", "permitted_ips"]).map({ !$0.isNull }) == true
                || environment[Self.environmentName(["bunq", "permitted_ips"])] != nil {
                permittedIPs = try strings(["bunq", "permitted_ips"])
                guard !permittedIPs.isEmpty else {
                    throw fail("bunq.permitted_ips", "must list at least one IP address or \"*\"")
                }
                for ip in permittedIPs where ip != "*" && !IPAddressText.isValid(ip) {
                    throw fail("bunq.permitted_ips", "'\(ip)' is not an IP address (v4 or v6) or \"*\"")
                }
            }
            let sourceAddress = try string(["bunq", "source_address"])
            if let sourceAddress, !IPAddressText.isValid(sourceAddress) {
                throw fail("bunq.source_address", "'\(sourceAddress)' is not an IP address (v4 or v6)")
            }

            let credentials = environment["CREDENTIALS_DIRECTORY"].flatMap { $0.isEmpty ? nil : $0 }
            let stateDirectory = try string(["state", "directory"]) ?? environment["STATE_DIRECTORY"]?
                .split(separator: ":").first.map(String.init) ?? "/var/lib/bunq-sessiond"
            let backendName = try string(["state", "backend"]) ?? "sqlite"
            guard let backend = StateBackendKind(rawValue: backendName) else {
                throw fail("state.backend", "must be sqlite or postgresql, not '\(backendName)'")
            }
            let masterKeyFile = try string(["state", "master_key_file"])
            if let masterKeyFile, !masterKeyFile.hasPrefix("/") {
                throw fail("state.master_key_file", "must be an absolute path")
            }
            let storeTimeout: Duration
            if let text = try string(["state", "timeout"]) {
                guard let seconds = Self.seconds(text), seconds >= 0.05, seconds <= 300 else {
                    throw fail("state.timeout", "must be a duration from 50ms to 300s (2s, 500ms, 1.5), not '\(text)'")
                }
                storeTimeout = .milliseconds(Int64((seconds * 1_000).rounded()))
            } else {
                storeTimeout = .seconds(2)
            }
            var postgres: PostgresSettings?
            if backend == .postgresql {
                guard let url = try string(["state", "postgresql", "url"]) else {
                    throw fail("state.postgresql.url", "is required with state.backend: postgresql")
                }
                // Several daemons share the store, so they must share the key: one generated here could never be
                // theirs.
                guard masterKeyFile != nil || credentials.map({ FileManager.default.fileExists(atPath: $0 + "/master-key") }) == true else {
                    throw fail("state.master_key_file", "is required with state.backend: postgresql (or the master-key "
                        + "credential): every daemon on the store needs the same key, so none may generate its own")
                }
                var password: String?
                if let name = try string(["state", "postgresql", "password_credential"]) {
                    guard let credentials else {
                        throw fail("state.postgresql.password_credential", "names a credential, but $CREDENTIALS_DIRECTORY is not set")
                    }
                    password = try readSecret("state.postgresql.password_credential", path: credentials + "/" + name)
                } else if let path = try string(["state", "postgresql", "password_file"]) {
                    password = try readSecret("state.postgresql.password_file", path: path)
                }
                password = password?.trimmingCharacters(in: .newlines)
                do {
                    postgres = try PostgresSettings.parse(url: url, password: password)
                } catch {
                    throw fail("state.postgresql.url", error.description)
                }
            } else if node(["state", "postgresql"]).map({ !$0.isNull }) == true {
                throw fail("state.postgresql", "is only read with state.backend: postgresql")
            }
            var cluster: ClusterSettings?
            if backend == .postgresql {
                let instance = try string(["cluster", "instance"]) ?? KeeperConfiguration.hostname
                guard KeeperConfiguration.isClusterName(instance) else {
                    throw fail("cluster.instance", "must be 1 to 64 letters, digits, '.', '_' or '-', not '\(instance)'")
                }
                let egressGroup = try string(["cluster", "egress_group"]) ?? instance
                guard KeeperConfiguration.isClusterName(egressGroup) else {
                    throw fail("cluster.egress_group", "must be 1 to 64 letters, digits, '.', '_' or '-', not '\(egressGroup)'")
                }
                let leaseSeconds = try int(["cluster", "lease_seconds"], default: 30, range: 3...3_600)
                cluster = ClusterSettings(instance: instance, egressGroup: egressGroup, leaseSeconds: Double(leaseSeconds))
            } else if node(["cluster"]).map({ !$0.isNull }) == true {
                throw fail("cluster", "is only read with state.backend: postgresql (one daemon owns an SQLite state)")
            }
            var metricsListen: MetricsListen?
            if let text = try string(["metrics", "listen"]) {
                guard let parsed = MetricsListen(text) else {
                    throw fail("metrics.listen", "must be HOST:PORT (an IP address; [v6]:PORT) or unix:/absolute/path, not '\(text)'")
                }
                metricsListen = parsed
            }
            let socketPath = try string(["socket", "path"]) ?? "/run/bunq-sessiond/socket"
            guard socketPath.hasPrefix("/"), socketPath.utf8.count < 108 else {
                throw fail("socket.path", "must be an absolute path shorter than 108 bytes")
            }
            var proxy: ProxySettings?
            if let proxySocket = try string(["proxy", "socket"]) {
                guard proxySocket.hasPrefix("/"), proxySocket.utf8.count < 108 else {
                    throw fail("proxy.socket", "must be an absolute path shorter than 108 bytes")
                }
                guard proxySocket != socketPath else { throw fail("proxy.socket", "must not be socket.path") }
                proxy = ProxySettings(
                    socket: proxySocket,
                    maxBodyBytes: try int(["proxy", "max_body_bytes"], default: 1 << 20, range: 1...(64 << 20)),
                    timeout: try int(["proxy", "timeout"], default: 30, range: 1...600),
                    maxConnections: try int(["proxy", "max_connections"], default: 1_024, range: 1...1_000_000),
                    maxConnectionsPerUID: try int(["proxy", "max_connections_per_uid"], default: 64, range: 1...1_000_000),
                    idleTimeout: try int(["proxy", "idle_timeout"], default: 60, range: 1...86_400))
            } else if let section = node(["proxy"]), !section.isNull {
                throw fail("proxy.socket", "is required when a proxy section is given (absent: no proxy)")
            }
            let maxConnections = try int(["socket", "max_connections"], default: 4_096, range: 1...1_000_000)
            let maxPerUID = try int(["socket", "max_connections_per_uid"], default: 64, range: 1...1_000_000)
            let idleTimeout = try int(["socket", "idle_timeout"], default: 300, range: 1...86_400)
            let requestTimeout = try int(["socket", "request_timeout"], default: 10, range: 1...3_600)
            let sendTimeout = try int(["socket", "send_timeout"], default: 30, range: 1...3_600)
            let eventLoops = try int(["socket", "event_loops"], default: max(1, ProcessInfo.processInfo.activeProcessorCount / 2),
                                     range: 1...256)

            var provider: Provider?
            if node(["provider"]).map({ !$0.isNull }) == true || environment[Self.environmentName(["provider", "certificate"])] != nil {
                guard let certificate = try string(["provider", "certificate"]) else {
                    throw fail("provider.certificate", "is required when a provider is configured")
                }
                let certificatePEM = try readSecret("provider.certificate", path: certificate)
                let credentialKey = credentials.map { $0 + "/eidas-key" }
                let (keySource, keyPEM): (String, String)
                if let credentialKey, FileManager.default.fileExists(atPath: credentialKey) {
                    (keySource, keyPEM) = ("credential eidas-key", try readSecret("provider.private_key", path: credentialKey))
                } else if let path = try string(["provider", "private_key"]) {
                    (keySource, keyPEM) = (path, try readSecret("provider.private_key", path: path))
                } else {
                    throw fail("provider.private_key", "is required (or the systemd credential eidas-key)")
                }
                let chainPath = try string(["provider", "certificate_chain"])
                let redirects = try strings(["provider", "oauth_redirect_uris"])
                for uri in redirects {
                    guard let components = URLComponents(string: uri), components.scheme != nil, components.host != nil else {
                        throw fail("provider.oauth_redirect_uris", "'\(uri)' is not an absolute URL")
                    }
                }
                provider = Provider(certificatePath: certificate, certificatePEM: certificatePEM,
                                    privateKeySource: keySource, privateKeyPEM: keyPEM, chainPath: chainPath,
                                    chainPEM: try chainPath.map { path throws(ConfigurationError) in
                                        try readSecret("provider.certificate_chain", path: path)
                                    },
                                    oauthRedirectURIs: redirects)
            }

            var apiKeys: [APIKeyIdentity] = []
            if let node = node(["api_keys"]), !node.isNull {
                guard let items = node.sequence else { throw fail("api_keys", "must be a list of {name, key_file}") }
                for (index, item) in items.enumerated() {
                    let key = "api_keys[\(index)]"
                    guard let mapping = item.mapping else { throw fail(key, "must be a mapping {name, key_file}") }
                    for (field, _) in mapping where !["name", "key_file", "key_credential"].contains(field.string ?? "") {
                        throw fail("\(key).\(field.string ?? "?")", "is not a known key (name, key_file, key_credential)")
                    }
                    guard let name = mapping[Node("name")]?.string, Self.isValidName(name) else {
                        throw fail("\(key).name", "must be 1-64 characters of a-z, 0-9, '-', '_' or '.', not 'provider' or user-*")
                    }
                    guard !apiKeys.contains(where: { $0.name == name }) else { throw fail("\(key).name", "'\(name)' is used twice") }
                    let secret: String
                    if let credential = mapping[Node("key_credential")]?.string {
                        guard let credentials else {
                            throw fail("\(key).key_credential", "needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=)")
                        }
                        secret = try readSecret("\(key).key_credential", path: credentials + "/" + credential)
                    } else if let file = mapping[Node("key_file")]?.string {
                        secret = try readSecret("\(key).key_file", path: file)
                    } else {
                        throw fail(key, "needs key_file or key_credential")
                    }
                    let trimmed = secret.trimmingCharacters(in: .whitespacesAndNewlines)
                    guard !trimmed.isEmpty, !trimmed.contains(where: \.isWhitespace) else {
                        throw fail(key, "the API key is empty or contains spaces")
                    }
                    apiKeys.append(APIKeyIdentity(name: name, key: trimmed))
                }
            }

            let margin = try int(["renewal", "safety_margin"], default: 60, range: 1...3_600)
            let backoffMax = try int(["renewal", "backoff_max"], default: 300, range: 1...3_600)
            let backoffBaseText = try string(["renewal", "backoff_base"]) ?? "1"
            guard let backoffBase = Double(backoffBaseText), backoffBase >= 0.01, backoffBase <= Double(backoffMax) else {
                throw fail("renewal.backoff_base", "must be seconds from 0.01 to renewal.backoff_max, not '\(backoffBaseText)'")
            }
            let concurrency = try int(["renewal", "max_concurrent"], default: 8, range: 1...256)
            let minManual = try int(["renewal", "min_manual_interval"], default: 60, range: 0...86_400)
            let access = try accessRules()
            return KeeperConfiguration(
                file: file, endpoints: endpoints, environment: bunqEnvironment, rateLimits: rateLimits,
                rateLimitScale: rateLimitScale,
                psd2FirstSessionTimeout: firstSession, permittedIPs: permittedIPs, sourceAddress: sourceAddress,
                socketPath: socketPath, maxConnections: maxConnections, maxConnectionsPerUID: maxPerUID,
                idleTimeout: idleTimeout, requestTimeout: requestTimeout, sendTimeout: sendTimeout, eventLoops: eventLoops,
                stateDirectory: stateDirectory, backend: backend, postgres: postgres, masterKeyFile: masterKeyFile,
                storeTimeout: storeTimeout, cluster: cluster, metricsListen: metricsListen, proxy: proxy, credentialsDirectory: credentials, provider: provider, apiKeys: apiKeys,
                policy: RenewalPolicy(safetyMargin: TimeInterval(margin), backoffBase: backoffBase,
                                      backoffMax: TimeInterval(backoffMax)),
                maxConcurrentRenewals: concurrency, minManualRenewalInterval: TimeInterval(minManual),
                deviceDescription: try string(["device_description"]) ?? "bunq-sessiond",
                access: access)
        }

        /// `access: {admin: {users, groups}, contexts: {PATTERN: {users, groups}}}`; users and groups by name or
        /// number. Without the section: root is admin and the group bunq-session may use every context.
        func accessRules() throws(ConfigurationError) -> AccessRules {
            guard let section = node(["access"]), !section.isNull else { return AccessRules.default }
            guard let mapping = section.mapping else { throw fail("access", "must be a mapping {admin, contexts}") }
            func principals(_ node: Node, _ key: String) throws(ConfigurationError) -> Principals {
                guard let mapping = node.mapping else { throw fail(key, "must be a mapping {users: [...], groups: [...]}") }
                var result = Principals()
                for (field, value) in mapping {
                    let name = field.string ?? "?"
                    guard name == "users" || name == "groups" else { throw fail("\(key).\(name)", "is not a known key (users, groups)") }
                    guard let items = value.sequence?.compactMap({ $0.scalar?.string }), items.count == value.sequence?.count else {
                        throw fail("\(key).\(name)", "must be a list of names or numbers")
                    }
                    if name == "users" { result.users = items } else { result.groups = items }
                }
                return result
            }
            var rules = AccessRules(admin: Principals(), contexts: [])
            for (field, value) in mapping {
                switch field.string ?? "?" {
                case "admin": rules.admin = try principals(value, "access.admin")
                case "contexts":
                    guard let contexts = value.mapping else { throw fail("access.contexts", "must be a mapping of context patterns") }
                    for (pattern, principalsNode) in contexts {
                        let name = pattern.string ?? "?"
                        rules.contexts.append(AccessRules.Rule(pattern: name,
                                                               principals: try principals(principalsNode, "access.contexts.\(name)")))
                    }
                default:
                    throw fail("access.\(field.string ?? "?")", "is not a known key (admin, contexts)")
                }
            }
            return rules
        }

        static func isValidName(_ name: String) -> Bool {
            !name.isEmpty && name.count <= 64 && name != "provider" && !name.hasPrefix("user-")
                && name.allSatisfy { ($0.isASCII && ($0.isLowercase || $0.isNumber)) || "-_.".contains($0) }
        }
    }
}

extension KeeperConfiguration {
    /// `proxy:`: the bunq API proxy's socket and its limits.
    public struct ProxySettings: Sendable, Equatable {
        /// The Unix socket applications send their bunq requests to (`proxy.socket`, mode 0660).
        public let socket: String
        /// The largest request body accepted (`proxy.max_body_bytes`); larger ones are answered 413.
        public let maxBodyBytes: Int
        /// Seconds a request may take for its rate-limit slot and bunq's answer together (`proxy.timeout`).
        public let timeout: Int
        /// Connections served at once (`proxy.max_connections`); admins keep a reserve beyond it.
        public let maxConnections: Int
        /// Connections one uid may hold (`proxy.max_connections_per_uid`).
        public let maxConnectionsPerUID: Int
        /// Seconds a connection may sit between requests, or take for one request's head and body
        /// (`proxy.idle_timeout`).
        public let idleTimeout: Int
    }

    /// The session-server budget our side grants: bunq's (scaled), or none with `rate_limits: unlimited`.
    /// `metrics.listen`: a TCP address (an IP literal and a port) or a Unix socket path.
    public enum MetricsListen: Sendable, Equatable, CustomStringConvertible {
        case tcp(host: String, port: Int)
        case unix(path: String)

        public init?(_ text: String) {
            if text.hasPrefix("unix:") {
                let path = String(text.dropFirst(5))
                guard path.hasPrefix("/"), path.utf8.count < 108 else { return nil }
                self = .unix(path: path)
                return
            }
            guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65_535).contains(port)
            else { return nil }
            var host = String(text[..<colon])
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            guard IPAddressText.isValid(host) else { return nil }
            self = .tcp(host: host, port: port)
        }

        public var description: String {
            switch self {
            case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            case .unix(let path): "unix:\(path)"
            }
        }
    }

    /// The kernel's hostname (no resolver involved: a start must not wait for DNS).
    static var hostname: String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// A cluster member's or egress group's name: plain, so it can never smuggle anything into a log or a query.
    static func isClusterName(_ name: String) -> Bool {
        (1...64).contains(name.utf8.count) && name.unicodeScalars.allSatisfy {
            ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || "._-".unicodeScalars.contains($0)
        }
    }

    public var sessionServerBudget: SessionServerBudget {
        rateLimits == .unlimited ? .unlimited : SessionServerBudget(scale: rateLimitScale, renewFraction: policy.renewFraction)
    }
}

extension Node {
    /// A YAML null (`~`, `null`, or nothing) in plain style.
    var isNull: Bool {
        guard case .scalar(let scalar) = self, scalar.style == .plain else { return false }
        return ["", "~", "null", "Null", "NULL"].contains(scalar.string)
    }
}

/// Whether a text is an IPv4 or IPv6 address, as bunq's `permitted_ips` and a socket's local address need.
enum IPAddressText {
    static func isValid(_ text: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
    }
}
