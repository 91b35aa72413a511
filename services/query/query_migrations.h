/*  query_migrations.h - the schema migrations compiled into the binary
    from services/query/migrations/NNN_name.sql, oldest first.  */
#ifndef QUERY_MIGRATIONS_H_INCLUDED
#define QUERY_MIGRATIONS_H_INCLUDED

#include "query_db.h"

extern const query_migration_t query_migrations[];
extern const int query_migration_count;

#endif
