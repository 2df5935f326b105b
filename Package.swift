// swift-tools-version:6.1
// bunq-sessiond: keeps bunq API sessions alive and serves tokens and signatures over a Unix socket.
// Swift 6 language mode (complete concurrency checking) is the default for tools version 6.x.

import PackageDescription

/// Settings shared by every Swift target of ours.
let strictSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "bunq-sessiond",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "BunqCrypto", targets: ["BunqCrypto"]),
        .library(name: "CurlHTTP", targets: ["CurlHTTP"]),
        .library(name: "SystemdSupport", targets: ["SystemdSupport"]),
        .library(name: "BunqSandbox", targets: ["BunqSandbox"]),
        .library(name: "BunqAPI", targets: ["BunqAPI"]),
        .executable(name: "bunq-sandbox", targets: ["bunq-sandbox"]),
        .executable(name: "bunq-sessiond", targets: ["bunq-sessiond"]),
        .executable(name: "bunq-sessionctl", targets: ["bunq-sessionctl"]),
        .library(name: "SessiondClient", targets: ["SessiondClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-async-algorithms", from: "1.1.4"),
    ],
    targets: [
        // MARK: C libraries of the system (pkg-config + apt providers; shims only where Swift cannot import)
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        .systemLibrary(
            name: "CCurl",
            pkgConfig: "libcurl",
            providers: [.apt(["libcurl4-openssl-dev"])]
        ),
        .systemLibrary(
            name: "CSystemd",
            pkgConfig: "libsystemd",
            providers: [.apt(["libsystemd-dev"])]
        ),

        // MARK: Modules
        .target(
            name: "BunqCrypto",
            dependencies: ["COpenSSL"],
            swiftSettings: strictSettings
        ),
        .target(
            name: "CurlHTTP",
            dependencies: ["CCurl"],
            swiftSettings: strictSettings
        ),
        .target(
            name: "SystemdSupport",
            dependencies: ["CSystemd", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),

        // Timekeeping: the injected clock (AnyClock) every part that reads the time or waits takes.
        .target(
            name: "Timekeeping",
            swiftSettings: strictSettings
        ),
        // The configuration file: YAML, environment overrides, and the refusal of keys nobody reads; each section's
        // type lives in the module it configures.
        .target(
            name: "ConfigFile",
            dependencies: [.product(name: "Yams", package: "Yams")],
            swiftSettings: strictSettings
        ),
        .target(
            name: "BunqAPI",
            dependencies: ["BunqCrypto", "CurlHTTP", "Timekeeping", "DynamicJSON", .product(name: "Metrics", package: "swift-metrics")],
            swiftSettings: strictSettings
        ),
        // What a NIO server accepted and its loop has not taken yet (closed, never dropped).
        .target(
            name: "AcceptedConnections",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: strictSettings
        ),
        // The one listener of every Unix socket: bind or socket activation, mode, SO_PEERCRED, admission, accept
        // pause, write stalls.
        .target(
            name: "UnixListener",
            dependencies: [
                "AcceptedConnections",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "DynamicJSON",
            swiftSettings: strictSettings
        ),
        .target(
            name: "SessionProtocol",
            dependencies: ["DynamicJSON"],
            swiftSettings: strictSettings
        ),
        .target(
            name: "SessiondClient",
            dependencies: ["SessionProtocol", "DynamicJSON"],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "bunq-sessionctl",
            dependencies: [
                // SessionKeeper: `backup` copies the SQLite state itself, with SQLite's backup API.
                "SessiondClient", "SessionProtocol", "SessionKeeper",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSettings
        ),
        // The Prometheus exposition: swift-prometheus behind swift-metrics, served over HTTP (daemon only).
        .target(
            name: "MetricsEndpoint",
            dependencies: [
                "SessionKeeper", "BunqAPI", "UnixListener", "ConfigFile",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "PostgresState",
            dependencies: [
                "SessionKeeper", "BunqAPI", "BunqCrypto",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "SessionServer",
            dependencies: [
                "SessionKeeper", "SessionProtocol", "BunqAPI", "UnixListener", "Timekeeping", "ConfigFile",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        // The bunq API proxy: HTTP/1.1 on a Unix socket (SwiftNIO's HTTP codec), over the keeper and the bunq client.
        .target(
            name: "BunqProxy",
            dependencies: [
                "SessionKeeper", "SessionServer", "SessionProtocol", "BunqAPI", "CurlHTTP", "UnixListener", "Timekeeping", "ConfigFile",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "SessionKeeper",
            dependencies: [
                "BunqAPI", "Timekeeping", "ConfigFile",
                "BunqCrypto",
                .product(name: "HeapModule", package: "swift-collections"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "AsyncAlgorithms", package: "swift-async-algorithms"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "BunqSandbox",
            dependencies: [
                "AcceptedConnections", "BunqCrypto", "CurlHTTP", "DynamicJSON",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),

        // MARK: Executables
        .executableTarget(
            name: "bunq-sandbox",
            dependencies: [
                "BunqSandbox",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSettings
        ),

        // The daemon's whole configuration file: every module's section, read and validated together.
        .target(
            name: "SessiondConfiguration",
            dependencies: ["ConfigFile", "SessionKeeper", "SessionServer", "BunqProxy", "MetricsEndpoint"],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "bunq-sessiond",
            dependencies: [
                "SessiondConfiguration",
                "SessionKeeper",
                "SessionServer",
                "BunqProxy",
                "PostgresState",
                "MetricsEndpoint",
                "UnixListener",
                "SystemdSupport",
                "BunqAPI",
                "Timekeeping",
                "ConfigFile",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                // NIOSingletons: the size of the shared event-loop group (socket.event_loops).
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: strictSettings
        ),

        .executableTarget(
            name: "bunq-sessiond-bench",
            // TestSupport: the bench starts a PostgreSQL of its own for the cluster rows, as the tests do.
            dependencies: ["SessionKeeper", "PostgresState", "BunqAPI", "BunqCrypto", "DynamicJSON", "TestSupport",
                           .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),

        // MARK: Tests
        .target(
            name: "TestSupport",
            dependencies: ["BunqSandbox", "Timekeeping", .product(name: "NIOHTTP1", package: "swift-nio")],
            path: "Tests/TestSupport",
            swiftSettings: strictSettings
        ),
        // TestThreads: the suites' `.ownThread` trait (apart from TestSupport, which the bench links too).
        .target(
            name: "TestThreads",
            dependencies: ["TestSupport"],
            path: "Tests/TestThreads",
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "BunqCryptoTests",
            dependencies: ["TestThreads", "BunqCrypto", "TestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "CurlHTTPTests",
            dependencies: ["TestThreads", "CurlHTTP", "TestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "BunqAPITests",
            dependencies: ["TestThreads", "BunqAPI", "BunqSandbox", "BunqCrypto", "CurlHTTP", "TestSupport", "Timekeeping"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "StateBackendTests",
            dependencies: [
                "SessionKeeper", "PostgresState", "TestThreads", "BunqAPI", "BunqCrypto", "TestSupport",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "SessionKeeperTests",
            dependencies: [
                "SessionKeeper", "BunqAPI", "BunqCrypto", "BunqSandbox", "CurlHTTP", "TestSupport", "TestThreads", "Timekeeping",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "BunqSandboxTests",
            dependencies: ["TestThreads", "BunqSandbox", "BunqCrypto", "CurlHTTP", "TestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "DaemonTests",
            dependencies: ["TestThreads", "TestSupport", "SessionServer", "SessiondClient", "UnixListener", "SessiondConfiguration",
                           .product(name: "NIOCore", package: "swift-nio"), .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "SessionProtocolTests",
            dependencies: ["TestThreads", "SessionProtocol", "DynamicJSON"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "SystemdSupportTests",
            dependencies: ["TestThreads", "SystemdSupport", "TestSupport"],
            swiftSettings: strictSettings
        ),
    ]
)
