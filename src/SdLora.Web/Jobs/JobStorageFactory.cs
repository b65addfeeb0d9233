using System.Net.Sockets;
using Hangfire;
using Hangfire.PostgreSql;
using Hangfire.PostgreSql.Factories;
using Hangfire.Storage.SQLite;
using Npgsql;

namespace SdLora.Web.Jobs;

/// <summary>
/// The engine's storage: Hangfire's embedded SQLite file for one machine, or Hangfire.PostgreSql when <c>--jobs
/// postgres://...</c> names a database that a server and its workers share.
/// </summary>
public static class JobStorageFactory
{
    private const string Usage = "use --jobs postgres://USER[:PASS]@HOST[:PORT]/DB (e.g. postgres://sdlora@db.local:5432/sdlora)";

    /// <summary>
    /// <c>postgres://USER[:PASS]@HOST[:PORT]/DB[?sslmode=require]</c> (also <c>postgresql://</c>) as an Npgsql connection
    /// string; the password may instead come from <c>PGPASSWORD</c> or <c>~/.pgpass</c>, as for psql.
    /// </summary>
    public static string ConnectionString(string url)
    {
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme is not ("postgres" or "postgresql"))
            throw new SdLoraException($"--jobs '{Redact(url)}' is not a PostgreSQL URL: {Usage}");
        var db = Uri.UnescapeDataString(uri.AbsolutePath.Trim('/'));
        var userInfo = uri.UserInfo.Split(':', 2);
        var user = Uri.UnescapeDataString(userInfo[0]);
        if (uri.Host.Length == 0 || db.Length == 0 || db.Contains('/') || user.Length == 0)
            throw new SdLoraException($"--jobs '{Redact(url)}' needs a user, a host and a database: {Usage}");
        var b = new NpgsqlConnectionStringBuilder
        {
            Host = uri.Host, Port = uri.IsDefaultPort || uri.Port < 0 ? 5432 : uri.Port, Database = db, Username = user,
            Timeout = 5, ApplicationName = "sdlora",
        };
        if (userInfo.Length == 2) b.Password = Uri.UnescapeDataString(userInfo[1]);
        foreach (var pair in uri.Query.TrimStart('?').Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            var kv = pair.Split('=', 2);
            var key = Uri.UnescapeDataString(kv[0]);
            var value = kv.Length == 2 ? Uri.UnescapeDataString(kv[1]) : "";
            if (key == "sslmode" && Enum.TryParse<SslMode>(value, ignoreCase: true, out var mode)) b.SslMode = mode;
            else throw new SdLoraException($"--jobs: the URL parameter '{key}' is not supported here: only sslmode=disable|prefer|require|verify-ca|verify-full");
        }
        return b.ConnectionString;
    }

    /// <summary>The URL without its password, for messages.</summary>
    public static string Redact(string url)
    {
        int at = url.IndexOf('@'), scheme = url.IndexOf("://", StringComparison.Ordinal);
        if (at < 0 || scheme < 0 || at < scheme) return url;
        var colon = url.IndexOf(':', scheme + 3);
        return colon > 0 && colon < at ? url[..colon] + ":***" + url[at..] : url;
    }

    /// <summary>Opens the storage; an unreachable or refusing PostgreSQL is one line naming it and the fix.</summary>
    public static JobStorage Create(ServeOptions options, DataFolders folders)
    {
        if (options.Jobs is not { } url)
            return new SQLiteStorage(folders.JobDatabase, new SQLiteStorageOptions { QueuePollInterval = options.QueuePollInterval });
        var connectionString = ConnectionString(url);
        Probe(url, connectionString);
        var pg = new PostgreSqlStorageOptions
        {
            QueuePollInterval = options.QueuePollInterval,
            // A fetched job that its worker stops touching (killed, lost power, cut off) is handed out again after this;
            // a live worker keeps its job fetched (sliding), so long training is never taken over while it runs.
            InvisibilityTimeout = options.TakeoverAfter,
            UseSlidingInvisibilityTimeout = true,
            // A lock left by a dead process is broken after this (our locks are held for milliseconds).
            DistributedLockTimeout = options.TakeoverAfter,
            PrepareSchemaIfNecessary = true,
            SchemaName = "sdlora_hangfire",
        };
        try { return new PostgreSqlStorage(new NpgsqlConnectionFactory(connectionString, pg), pg); }
        catch (Exception e) when (e is NpgsqlException or SocketException or TimeoutException)
        {
            throw Unreachable(url, e);
        }
    }

    /// <summary>Fails now, with the one-line reason, when <c>--jobs</c> names a PostgreSQL that cannot be used (before any host starts and logs).</summary>
    public static void CheckReachable(ServeOptions options)
    {
        if (options.Jobs is { } url) Probe(url, ConnectionString(url));
    }

    private static void Probe(string url, string connectionString)
    {
        try
        {
            using var connection = new NpgsqlConnection(connectionString);
            connection.Open();
        }
        catch (Exception e) when (e is NpgsqlException or SocketException or TimeoutException or InvalidOperationException)
        {
            throw Unreachable(url, e);
        }
    }

    private static SdLoraException Unreachable(string url, Exception e)
    {
        var b = new NpgsqlConnectionStringBuilder(ConnectionString(url));
        var why = (e is PostgresException p ? p.MessageText : (e.InnerException ?? e).Message).ReplaceLineEndings(" ");
        return new SdLoraException($"cannot use PostgreSQL at {b.Host}:{b.Port}/{b.Database} as user {b.Username} ({why}): start the server, "
            + "create the database and user (createdb -O USER DB), or fix --jobs postgres://USER@HOST:PORT/DB");
    }
}
