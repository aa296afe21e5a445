package mysql

import (
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/go-sql-driver/mysql"

	"github.com/pharox/pharox"
)

// DSNFromURL converts a URL of the form
// mysql://user:password@host:port/database?param=value into the DSN
// go-sql-driver/mysql takes (user:password@tcp(host:port)/database?...).
// Query parameters pass through to the driver (tls=true, for example);
// the port defaults to 3306.
func DSNFromURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("%w: mysql URL: %v", pharox.ErrInvalidArgument, err)
	}
	if s := strings.ToLower(u.Scheme); s != "mysql" && s != "mariadb" {
		return "", fmt.Errorf("%w: mysql URL: scheme %q is not mysql://", pharox.ErrInvalidArgument, u.Scheme)
	}
	if u.Host == "" {
		return "", fmt.Errorf("%w: mysql URL names no host (want mysql://user@host:3306/database)", pharox.ErrInvalidArgument)
	}
	db := strings.TrimPrefix(u.Path, "/")
	if db == "" || strings.Contains(db, "/") {
		return "", fmt.Errorf("%w: mysql URL names no database (want mysql://user@host:3306/database)", pharox.ErrInvalidArgument)
	}
	cfg := mysql.NewConfig()
	cfg.Net = "tcp"
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "3306"
	}
	cfg.Addr = net.JoinHostPort(host, port)
	cfg.DBName = db
	if u.User != nil {
		cfg.User = u.User.Username()
		cfg.Passwd, _ = u.User.Password()
	}
	// Parameters go through the driver's own DSN parser, which knows its
	// options and passes the rest on as session variables.
	dsn := cfg.FormatDSN()
	if u.RawQuery != "" {
		sep := "?"
		if strings.Contains(dsn, "?") {
			sep = "&"
		}
		dsn += sep + u.RawQuery
	}
	if _, err := mysql.ParseDSN(dsn); err != nil {
		return "", fmt.Errorf("%w: mysql URL: %v", pharox.ErrInvalidArgument, err)
	}
	return dsn, nil
}
