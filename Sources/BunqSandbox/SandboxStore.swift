import BunqCrypto
import Foundation

/// Everything the emulator remembers. Mutated only under `BunqSandbox`'s lock, so its methods are plain
/// synchronous code that reads like bunq's rules.
struct SandboxStore: Sendable {
    let configuration: SandboxConfiguration
    let serverKeys: ServerKeyRing

    private var nextIds: [String: Int] = [:]
    var users: [Int: SandboxUser] = [:]
    var apiKeyUsers: [Int: UserApiKey] = [:]
    var credentials: [String: Credential] = [:]
    var installations: [String: Installation] = [:]
    var installationsById: [Int: Installation] = [:]
    var devices: [Int: Device] = [:]
    /// Device ids per (installation, secret): registering again adds a device, as bunq does.
    var deviceBindings: [DeviceBinding: [Int]] = [:]
    var psd2Credentials: [Int: PSD2CredentialRecord] = [:]
    var accounts: [Int: MonetaryAccount] = [:]
    /// Each account's balance; an account opens with `openingBalance`.
    var balances: [Int: Money] = [:]
    /// Payments by id: each side of a movement is one (SandboxPayments.swift).
    var payments: [Int: PaymentRecord] = [:]
    var paymentBatches: [Int: PaymentBatchRecord] = [:]
    var requestInquiries: [Int: RequestInquiryRecord] = [:]
    var events: [Int: EventRecord] = [:]
    var draftPayments: [Int: DraftPaymentRecord] = [:]
    var providerDraftPayments: [Int: ProviderDraftPaymentRecord] = [:]
    /// Notification filters by the user id of the URL that set them, and by account (SandboxNotifications.swift).
    var userFilters: [Int: [NotificationFilter]] = [:]
    var accountFilters: [Int: [NotificationFilter]] = [:]
    /// Callbacks made under the lock and not yet handed to the delivery.
    var outbox: [CallbackJob] = []
    /// The account of bunq's sandbox benefactor, `sugardaddy@bunq.com`, made the first time someone asks it for money.
    var sugarDaddyAccountId: Int?
    var sessions: [String: Session] = [:]
    /// Request ids used, per installation.
    var requestIds: [Int: RequestIdLog] = [:]
    /// How many dead-session answers were given (`mixed` takes them in turn).
    var deadSessionAnswers = 0
    var oauthClients: [Int: OAuthClient] = [:]
    var authorizationCodes: [String: AuthorizationCode] = [:]
    /// The user who approves the next OAuth authorizations (`/_sandbox/oauth/approve-as`); nil: a fresh one each.
    var approvingUserId: Int?
    var stats = SandboxStats()

    init(configuration: SandboxConfiguration, serverKeys: ServerKeyRing) {
        self.configuration = configuration
        self.serverKeys = serverKeys
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
        let hasAccounts = kind != .serviceProvider
        let iban = hasAccounts ? Self.iban(id, 0) : nil
        let user = SandboxUser(
            id: id, kind: kind, created: now,
            displayName: displayName ?? (kind == .company ? "Sandbox Company \(id)" : "Sandbox User \(id)"),
            publicUUID: UUID().uuidString.lowercased(), iban: iban,
            email: hasAccounts ? "user\(id)@sandbox.bunq.example" : nil,
            phone: hasAccounts ? String(format: "+316%08d", id % 100_000_000) : nil, certificateDN: certificateDN)
        users[id] = user
        if hasAccounts {
            // Everyone has a current account; like real users, some also have savings (every third) and a joint
            // account (every fifth), so clients meet more than `MonetaryAccountBank`.
            addAccount(.bank, ownerId: id, now: now)
            if id % 3 == 0 { addAccount(.savings, ownerId: id, now: now) }
            if id % 5 == 0 { addAccount(.joint, ownerId: id, now: now) }
        }
        return user
    }

    /// A Dutch IBAN at bunq for the user's `index`th account, with the check digits ISO 13616 gives it (so a
    /// client that validates IBANs accepts it).
    static func iban(_ userId: Int, _ index: Int) -> String {
        let account = String(format: "BUNQ2%03d%06d", index, userId % 1_000_000)
        return "NL" + String(format: "%02d", 98 - IBAN.remainder(account + "NL00")) + account
    }

    /// What every account holds when it opens.
    static let openingBalance = Money(cents: 100_000)

    @discardableResult
    mutating func addAccount(_ kind: MonetaryAccount.Kind, ownerId: Int, now: Date) -> MonetaryAccount {
        let index = accounts.values.reduce(0) { $0 + ($1.ownerId == ownerId ? 1 : 0) }
        let description = switch kind {
        case .bank: index == 0 ? "Main account" : "Account \(index + 1)"
        case .savings: "Savings"
        case .joint: "Joint account"
        }
        let account = MonetaryAccount(id: nextId("account", base: 5_000), kind: kind, ownerId: ownerId, created: now,
                                      iban: index == 0 ? (users[ownerId]?.iban ?? Self.iban(ownerId, 0))
                                          : Self.iban(ownerId, index),
                                      description: description)
        accounts[account.id] = account
        balances[account.id] = Self.openingBalance
        return account
    }

    /// A sandbox user with an API key (`POST /v1/sandbox-user-person` and `-company`).
    mutating func createSandboxUser(_ kind: SandboxUser.Kind, now: Date) -> (user: SandboxUser, apiKey: String) {
        let user = createUser(kind, now: now)
        let apiKey = "sandbox_" + Self.token().prefix(56)
        credentials[apiKey] = Credential(kind: .apiKey(userId: user.id), issued: now)
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
                    ("session_timeout", .int(sessionTimeout(of: user.id)))]
        if let iban = user.iban {
            var aliases: [BunqJSON] = []
            if let email = user.email {
                aliases.append(.object([("type", "EMAIL"), ("value", .string(email)), ("name", .string(email))]))
            }
            if let phone = user.phone {
                aliases.append(.object([("type", "PHONE_NUMBER"), ("value", .string(phone)), ("name", .string(phone))]))
            }
            aliases.append(.object([("type", "IBAN"), ("value", .string(iban)), ("name", .string(user.displayName))]))
            members.append(("alias", .array(aliases)))
        }
        return (user.kind.rawValue, .object(members))
    }

    /// A user's `session_timeout`: its own, or the configured default. For a `UserApiKey`, the requesting
    /// user's, as bunq's SDKs read it.
    func sessionTimeout(of userId: Int) -> Int {
        if let apiKey = apiKeyUsers[userId] { return sessionTimeout(of: apiKey.requestingUserId) }
        return users[userId]?.sessionTimeout ?? configuration.sessionTimeout
    }

    /// The monetary accounts a session's user may see, newest first: its own, or for a `UserApiKey` the
    /// granting user's.
    func accounts(visibleTo userId: Int, kind: MonetaryAccount.Kind? = nil) -> [MonetaryAccount] {
        let ownerId = apiKeyUsers[userId]?.grantingUserId ?? userId
        return accounts.values.filter { $0.ownerId == ownerId && (kind == nil || $0.kind == kind) }
            .sorted { $0.id > $1.id }
    }

    func accountObject(_ account: MonetaryAccount) -> BunqJSON {
        let created = BunqTime.format(account.created)
        let owner = users[account.ownerId]
        var members: [(String, BunqJSON)] = [
            ("id", .int(account.id)),
            ("created", .string(created)),
            ("updated", .string(created)),
            ("alias", .array([.object([("type", "IBAN"), ("value", .string(account.iban)),
                                        ("name", .string(owner?.displayName ?? ""))])])),
            ("balance", (balances[account.id] ?? Self.openingBalance).json),
            ("country", "NL"),
            ("currency", "EUR"),
            ("daily_limit", .object([("value", "1000.00"), ("currency", "EUR")])),
            ("description", .string(account.description)),
            ("public_uuid", .string(owner?.publicUUID ?? "")),
            ("status", "ACTIVE"),
            ("sub_status", "NONE"),
            ("user_id", .int(account.ownerId)),
        ]
        switch account.kind {
        case .bank: break
        case .savings:
            members.append(("savings_goal", .object([("value", "5000.00"), ("currency", "EUR")])))
            let balance = balances[account.id] ?? Self.openingBalance
            members.append(("savings_goal_progress", .double(max(0, Double(balance.cents) / 500_000))))
        case .joint:
            members.append(("all_co_owner", .array([.object([
                ("alias", .object([("display_name", .string(owner?.displayName ?? ""))])),
                ("status", "ACCEPTED"),
            ])])))
            members.append(("overdraft_limit", .object([("value", "0.00"), ("currency", "EUR")])))
        }
        return .object(members)
    }

    // MARK: Sessions

    /// The answer a dead session's token gets now (`mixed`: the three wordings bunq uses, in turn).
    mutating func deadSessionAnswer() -> SandboxError {
        switch configuration.deadSessionAnswer {
        case .status401: return .insufficientAuthentication
        case .status403: return .insufficientAuthorisation
        case .mixed:
            defer { deadSessionAnswers += 1 }
            let answers: [SandboxError] = [.insufficientAuthentication, .insufficientAuthentication403,
                                           .insufficientAuthorisation]
            return answers[deadSessionAnswers % answers.count]
        }
    }

    /// Ends live sessions chosen by `matching` at once (their tokens get the dead-session answer); returns how
    /// many.
    @discardableResult
    mutating func killSessions(now: Date, matching: (Session) -> Bool) -> Int {
        var killed = 0
        for (token, session) in sessions where session.isLive(at: now) && matching(session) {
            sessions[token]?.ended = true
            killed += 1
        }
        stats.sessionsKilled += killed
        return killed
    }

    var liveSessionCount: Int {
        let now = configuration.now
        return sessions.values.reduce(0) { $0 + ($1.isLive(at: now) ? 1 : 0) }
    }

    /// Forgets sessions that are over: an unknown token gets the same answer as an expired one.
    mutating func pruneSessions(now: Date) {
        sessions = sessions.filter { $0.value.isLive(at: now) }
    }
}
