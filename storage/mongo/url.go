package mongo

import (
	"fmt"
	"strings"

	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/connstring"

	"github.com/pharox/pharox"
)

// DefaultDatabase is the database a URI that names none uses.
const DefaultDatabase = "pharox"

// DatabaseFromURI returns the database a mongodb:// or mongodb+srv:// URI
// names in its path, or DefaultDatabase when it names none. A URI the
// driver cannot parse is an ErrInvalidArgument.
func DatabaseFromURI(uri string) (string, error) {
	lower := strings.ToLower(uri)
	if !strings.HasPrefix(lower, "mongodb://") && !strings.HasPrefix(lower, "mongodb+srv://") {
		return "", fmt.Errorf("%w: mongo URI must start with mongodb:// or mongodb+srv://", pharox.ErrInvalidArgument)
	}
	cs, err := connstring.Parse(uri)
	if err != nil {
		return "", fmt.Errorf("%w: mongo URI: %v", pharox.ErrInvalidArgument, err)
	}
	if cs.Database == "" {
		return DefaultDatabase, nil
	}
	return cs.Database, nil
}
