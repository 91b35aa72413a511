/*  upload_xml.h - reading the XML documents S3 answers with. The only
    module that includes the XML library (expat): it walks a document and
    reports each element by its path of local names, so the S3 client
    only knows paths such as "ListBucketResult/Contents/Key".
*/
#ifndef UPLOAD_XML_H_INCLUDED
#define UPLOAD_XML_H_INCLUDED

#include <stddef.h>

/*  Deepest element reported; deeper documents are malformed for us.  */
#define UPLOAD_XML_MAX_DEPTH 8
/*  Longest text of one element (S3 keys are at most 1,024 bytes).  */
#define UPLOAD_XML_MAX_TEXT 4096

/*  Called when an element opens (text NULL) and when it closes (text is
    its character data, NUL-terminated, len bytes). path is the slash-
    joined local names from the root, e.g. "Error/Code".  */
typedef void(upload_xml_fn)(void *arg, const char *path, const char *text, size_t len);

/*  Parse the whole document in data, calling fn for every element.
    Returns 0, or -1 when the document is not well-formed, has a DOCTYPE,
    nests deeper than UPLOAD_XML_MAX_DEPTH or an element's text is longer
    than UPLOAD_XML_MAX_TEXT.  */
int upload_xml_parse(const char *data, size_t len, upload_xml_fn *fn, void *arg);

#endif
