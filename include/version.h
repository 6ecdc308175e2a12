/* The one place the version is written: `ftpsgate -V`, the start-up log line and the
 * Makefile (`make version`, install) read it from here. */
#ifndef GW_VERSION_H
#define GW_VERSION_H

#define GW_VERSION "0.1.0"

#endif
