import BunqCrypto
import Foundation

/// Everything the emulator remembers. Mutated only under `BunqSandbox`'s lock, so its methods are plain
/// synchronous code that reads like bunq's rules.
struct SandboxStore: Sendable {
    let configuration: SandboxConfiguration
    let serverPublicKeyPEMs: [String]

    private var nextIds: [String: Int] = [:]
    var users: [Int: SandboxUser] = [:]
    var apiKeyUsers: [Int: UserApiKey] = [:]
    var credentials: [String: Credential] = [:]
    var installations: [String: Installation] = [:]
    var installationsById: [Int: Installation] = [:]
    var deviceBindings: Set<DeviceBinding> = []
    var sessions: [String: Session] = [:]
    var oauthClients: [Int: OAuthClient] = [:]
    var authorizationCodes: [String: AuthorizationCode] = [:]
    /// The user who approves the next OAuth authorizations (`/_sandbox/oauth/approve-as`); nil: a fresh one each.
    var approvingUserId: Int?
    var stats = SandboxStats()

    init(configuration: SandboxConfiguration, serverPublicKeyPEMs: [String]) {
        self.configuration = configuration
        self.serverPublicKeyPEMs = serverPublicKeyPEMs
    }

    /// Ids per kind of object, each from its own range like bunq's, increasing.
    mutating func nextId(_ kind: String, base: Int) -> Int {
        let id = (nextIds[kind] ?? base) + 1
        nextIds[kind] = id
        return id
    }

    static func token() -> String {
        (try? SecureRandom.hexToken(byteCount: 32)) ?? UUID().uuidString.replacingOccurrences(of: "-", with: "")
    }

    // MARK: Users

    mutating func createUser(_ kind: SandboxUser.Kind, displayName: String? = nil, certificateDN: String? = nil,
                             now: Date) -> SandboxUser {
        let id = nextId("user", base: 1_800_000)
        let hasAccount = kind != .serviceProvider
        let user = SandboxUser(
            id: id, kind: kind, created: now,
            displayName: displayName ?? (kind == .company ? "Sandbox Company \(id)" : "Sandbox User \(id)"),
            publicUUID: UUID().uuidString.lowercased(),
            accountId: hasAccount ? nextId("account", base: 5_000) : nil,
            iban: hasAccount ? String(format: "NL%02dBUNQ20%08d", 10 + id % 89, id % 100_000_000) : nil,
            certificateDN: certificateDN)
        users[id] = user
        return user
    }

    /// A sandbox user with an API key (`POST /v1/sandbox-user-person` and `-company`).
    mutating func createSandboxUser(_ kind: SandboxUser.Kind, now: Date) -> (user: SandboxUser, apiKey: String) {
        let user = createUser(kind, now: now)
        let apiKey = "sandbox_" + Self.token().prefix(56)
        credentials[apiKey] = Credential(kind: .apiKey(userId: user.id))
        return (user, apiKey)
    }

    /// `{"UserPerson":{...}}` and friends, as `GET /v1/user` and session-server show a user.
    func userObject(_ userId: Int) -> (String, BunqJSON)? {
        if let apiKey = apiKeyUsers[userId] {
            guard let requesting = userObject(apiKey.requestingUserId), let granting = userObject(apiKey.grantingUserId)
            else { return nil }
            return ("UserApiKey", .object([
                ("id", .int(apiKey.id)),
                ("created", .string(BunqTime.format(apiKey.created))),
                ("updated", .string(BunqTime.format(apiKey.created))),
                ("requested_by_user", .object([requesting])),
                ("granted_by_user", .object([granting])),
            ]))
        }
        guard let user = users[userId] else { return nil }
        let created = BunqTime.format(user.created)
        var members: [(String, BunqJSON)] = [
            ("id", .int(user.id)),
            ("created", .string(created)),
            ("updated", .string(created)),
            ("public_uuid", .string(user.publicUUID)),
        ]
        switch user.kind {
        case .serviceProvider:
            members += [("certificate_distinguished_name", .string(user.certificateDN ?? "")),
                        ("display_name", .string(user.displayName)),
                        ("public_nick_name", .string(user.displayName))]
        case .person:
            members += [("first_name", "Sandbox"), ("last_name", .string("User \(user.id)")),
                        ("display_name", .string(user.displayName)), ("public_nick_name", "Sandbox"),
                        ("language", "en_US"), ("region", "nl_NL")]
        case .company:
            members += [("name", .string(user.displayName)), ("display_name", .string(user.displayName)),
                        ("public_nick_name", .string(user.displayName)), ("language", "en_US"), ("region", "nl_NL")]
        }
        members += [("status", "ACTIVE"), ("sub_status", "NONE"),
                    ("session_timeout", .int(configuration.sessionTimeout))]
        if let iban = user.iban {
            members.append(("alias", .array([.object([("type", "IBAN"), ("value", .string(iban)),
                                                       ("name", .string(user.displayName))])])))
        }
        return (user.kind.rawValue, .object(members))
    }

    /// The monetary accounts a session's user may list: its own, or for a `UserApiKey` the granting user's.
    func accounts(visibleTo userId: Int) -> [SandboxUser] {
        let ownerId = apiKeyUsers[userId]?.grantingUserId ?? userId
        guard let owner = users[ownerId], owner.accountId != nil else { return [] }
        return [owner]
    }

    func accountObject(_ owner: SandboxUser) -> BunqJSON {
        let created = BunqTime.format(owner.created)
        return .object([
            ("id", .int(owner.accountId ?? 0)),
            ("created", .string(created)),
            ("updated", .string(created)),
            ("alias", .array([.object([("type", "IBAN"), ("value", .string(owner.iban ?? "")),
                                        ("name", .string(owner.displayName))])])),
            ("balance", .object([("value", "1000.00"), ("currency", "EUR")])),
            ("country", "NL"),
            ("currency", "EUR"),
            ("daily_limit", .object([("value", "1000.00"), ("currency", "EUR")])),
            ("description", "Main account"),
            ("public_uuid", .string(owner.publicUUID)),
            ("status", "ACTIVE"),
            ("sub_status", "NONE"),
            ("user_id", .int(owner.id)),
        ])
    }

    // MARK: Sessions

    var liveSessionCount: Int {
        let now = configuration.now
        return sessions.values.reduce(0) { $0 + ($1.isLive(at: now) ? 1 : 0) }
    }

    /// Forgets sessions that are over: an unknown token gets the same answer as an expired one.
    mutating func pruneSessions(now: Date) {
        sessions = sessions.filter { $0.value.isLive(at: now) }
    }
}
