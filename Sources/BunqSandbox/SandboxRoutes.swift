/// One bunq endpoint the emulator serves.
struct Route: Sendable {
    enum Auth: Sendable {
        /// No `X-Bunq-Client-Authentication` needed.
        case none
        /// The installation token.
        case installation
        /// A live session token.
        case session
    }

    typealias Handler = @Sendable (inout SandboxStore, CallContext) throws(SandboxError) -> BunqJSON

    let method: String
    /// The path with `{…}` for numeric ids, e.g. `/v1/user/{userID}/oauth-client`; with the method, the endpoint
    /// name used in stats, rate limits and fault rules.
    let pattern: String
    let auth: Auth
    let signatureRequired: Bool
    let handler: Handler

    var name: String { "\(method) \(pattern)" }

    init(_ method: String, _ pattern: String, _ auth: Auth, signatureRequired: Bool = false, _ handler: @escaping Handler) {
        self.method = method
        self.pattern = pattern
        self.auth = auth
        self.signatureRequired = signatureRequired
        self.handler = handler
    }

    /// The numeric path ids when `path` matches this route's pattern.
    func match(_ path: some StringProtocol) -> [Int]? {
        let want = pattern.split(separator: "/")
        let have = path.split(separator: "/")
        guard want.count == have.count else { return nil }
        var ids: [Int] = []
        for (expected, actual) in zip(want, have) {
            if expected.hasPrefix("{") {
                guard let id = Int(actual) else { return nil }
                ids.append(id)
            } else if expected != actual {
                return nil
            }
        }
        return ids
    }

    static let all: [Route] = [
        Route("POST", "/v1/sandbox-user-person", .none) { store, call in store.sandboxUser(.person, call) },
        Route("POST", "/v1/sandbox-user-company", .none) { store, call in store.sandboxUser(.company, call) },
        Route("POST", "/v1/installation", .none) { store, call throws(SandboxError) in try store.installation(call) },
        Route("POST", "/v1/payment-service-provider-credential", .installation) { store, call throws(SandboxError) in
            try store.psd2Credential(call)
        },
        Route("GET", "/v1/installation", .session) { store, call throws(SandboxError) in try store.listInstallations(call) },
        Route("GET", "/v1/installation/{installationID}", .session) { store, call throws(SandboxError) in
            try store.installationRead(call)
        },
        Route("GET", "/v1/installation/{installationID}/server-public-key", .session) { store, call throws(SandboxError) in
            try store.serverPublicKey(call)
        },
        Route("GET", "/v1/payment-service-provider-credential/{credentialID}", .session) { store, call throws(SandboxError) in
            try store.psd2CredentialRead(call)
        },
        Route("POST", "/v1/device-server", .installation) { store, call throws(SandboxError) in try store.deviceServer(call) },
        Route("GET", "/v1/device-server", .session) { store, call throws(SandboxError) in try store.listDevices(call) },
        Route("GET", "/v1/device-server/{deviceID}", .session) { store, call throws(SandboxError) in try store.device(call) },
        Route("POST", "/v1/session-server", .installation, signatureRequired: true) { store, call throws(SandboxError) in
            try store.sessionServer(call)
        },
        Route("DELETE", "/v1/session/{sessionID}", .session) { store, call throws(SandboxError) in try store.deleteSession(call) },
        Route("GET", "/v1/user", .session) { store, call throws(SandboxError) in try store.listUsers(call) },
        Route("GET", "/v1/user/{userID}", .session) { store, call throws(SandboxError) in try store.user(call) },
        Route("GET", "/v1/user/{userID}/monetary-account", .session) { store, call throws(SandboxError) in
            try store.monetaryAccounts(call, kind: nil)
        },
        Route("GET", "/v1/user/{userID}/monetary-account/{accountID}", .session) { store, call throws(SandboxError) in
            try store.monetaryAccount(call, kind: nil)
        },
    ] + moneyRoutes + MonetaryAccount.Kind.allCases.flatMap { kind in [
        Route("GET", "/v1/user/{userID}/\(kind.pathSegment)", .session) { store, call throws(SandboxError) in
            try store.monetaryAccounts(call, kind: kind)
        },
        Route("GET", "/v1/user/{userID}/\(kind.pathSegment)/{accountID}", .session) { store, call throws(SandboxError) in
            try store.monetaryAccount(call, kind: kind)
        },
    ] } + [
        Route("POST", "/v1/user/{userID}/oauth-client", .session) { store, call throws(SandboxError) in
            try store.createOAuthClient(call)
        },
        Route("GET", "/v1/user/{userID}/oauth-client", .session) { store, call throws(SandboxError) in
            try store.listOAuthClients(call)
        },
        Route("GET", "/v1/user/{userID}/oauth-client/{clientID}", .session) { store, call throws(SandboxError) in
            try store.oauthClient(call)
        },
        Route("PUT", "/v1/user/{userID}/oauth-client/{clientID}", .session) { store, call throws(SandboxError) in
            try store.updateOAuthClient(call)
        },
        Route("POST", "/v1/user/{userID}/oauth-client/{clientID}/callback-url", .session) { store, call throws(SandboxError) in
            try store.createCallback(call)
        },
        Route("GET", "/v1/user/{userID}/oauth-client/{clientID}/callback-url", .session) { store, call throws(SandboxError) in
            try store.listCallbacks(call)
        },
        Route("GET", "/v1/user/{userID}/oauth-client/{clientID}/callback-url/{callbackID}", .session) {
            store, call throws(SandboxError) in try store.callback(call)
        },
        Route("PUT", "/v1/user/{userID}/oauth-client/{clientID}/callback-url/{callbackID}", .session) {
            store, call throws(SandboxError) in try store.updateCallback(call)
        },
        Route("DELETE", "/v1/user/{userID}/oauth-client/{clientID}/callback-url/{callbackID}", .session) {
            store, call throws(SandboxError) in try store.deleteCallback(call)
        },
    ]

    /// Payments, payment batches, request-inquiries, draft payments, providers' draft payments and events
    /// (SandboxPayments.swift, SandboxDraftPayments.swift). Every POST or PUT that moves or prepares money must be
    /// signed.
    static let moneyRoutes: [Route] = {
        let account = "/v1/user/{userID}/monetary-account/{accountID}"
        return [
            Route("POST", account + "/payment", .session, signatureRequired: true) { store, call throws(SandboxError) in
                try store.createPayment(call)
            },
            Route("GET", account + "/payment", .session) { store, call throws(SandboxError) in try store.listPayments(call) },
            Route("GET", account + "/payment/{paymentID}", .session) { store, call throws(SandboxError) in try store.payment(call) },
            Route("POST", account + "/payment-batch", .session, signatureRequired: true) { store, call throws(SandboxError) in
                try store.createPaymentBatch(call)
            },
            Route("GET", account + "/payment-batch", .session) { store, call throws(SandboxError) in
                try store.listPaymentBatches(call)
            },
            Route("GET", account + "/payment-batch/{batchID}", .session) { store, call throws(SandboxError) in
                try store.paymentBatch(call)
            },
            Route("POST", account + "/request-inquiry", .session, signatureRequired: true) { store, call throws(SandboxError) in
                try store.createRequestInquiry(call)
            },
            Route("GET", account + "/request-inquiry", .session) { store, call throws(SandboxError) in
                try store.listRequestInquiries(call)
            },
            Route("GET", account + "/request-inquiry/{requestID}", .session) { store, call throws(SandboxError) in
                try store.requestInquiry(call)
            },
            Route("POST", account + "/draft-payment", .session, signatureRequired: true) { store, call throws(SandboxError) in
                try store.createDraftPayment(call)
            },
            Route("GET", account + "/draft-payment", .session) { store, call throws(SandboxError) in
                try store.listDraftPayments(call)
            },
            Route("GET", account + "/draft-payment/{draftID}", .session) { store, call throws(SandboxError) in
                try store.draftPayment(call)
            },
            Route("PUT", account + "/draft-payment/{draftID}", .session, signatureRequired: true) { store, call throws(SandboxError) in
                try store.updateDraftPayment(call)
            },
            Route("POST", "/v1/user/{userID}/payment-service-provider-draft-payment", .session, signatureRequired: true) {
                store, call throws(SandboxError) in try store.createProviderDraftPayment(call)
            },
            Route("GET", "/v1/user/{userID}/payment-service-provider-draft-payment", .session) { store, call throws(SandboxError) in
                try store.listProviderDraftPayments(call)
            },
            Route("GET", "/v1/user/{userID}/payment-service-provider-draft-payment/{draftID}", .session) {
                store, call throws(SandboxError) in try store.providerDraftPayment(call)
            },
            Route("PUT", "/v1/user/{userID}/payment-service-provider-draft-payment/{draftID}", .session, signatureRequired: true) {
                store, call throws(SandboxError) in try store.updateProviderDraftPayment(call)
            },
            Route("POST", "/v1/user/{userID}/notification-filter-url", .session, signatureRequired: true) {
                store, call throws(SandboxError) in try store.setNotificationFilters(call, account: false)
            },
            Route("GET", "/v1/user/{userID}/notification-filter-url", .session) { store, call throws(SandboxError) in
                try store.notificationFilters(call, account: false)
            },
            Route("POST", account + "/notification-filter-url", .session, signatureRequired: true) { store, call throws(SandboxError) in
                try store.setNotificationFilters(call, account: true)
            },
            Route("GET", account + "/notification-filter-url", .session) { store, call throws(SandboxError) in
                try store.notificationFilters(call, account: true)
            },
            Route("GET", "/v1/user/{userID}/event", .session) { store, call throws(SandboxError) in try store.listEvents(call) },
            Route("GET", "/v1/user/{userID}/event/{eventID}", .session) { store, call throws(SandboxError) in try store.event(call) },
        ]
    }()
}
